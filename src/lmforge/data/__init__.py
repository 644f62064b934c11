"""Data: documents, readers, corpus building and token shards."""
