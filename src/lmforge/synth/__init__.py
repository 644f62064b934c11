"""Synthetic data for post-training: verifiable math, preference pairs, identity chats and
model-written problems (``lmforge synth``)."""
