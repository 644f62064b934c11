"""Data: documents, readers and writers, the cleaning pipeline and its steps, corpus building and token shards."""
