"""Durable bytes: blob store backends (local directory, any fsspec URL) and the fenced state store over them."""
