"""Inputs to vectors: encoder engines, the batch step, token-budgeted vectorising and the /v1/embeddings service."""
