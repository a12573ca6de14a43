"""Jina's wire format (pydantic request/response models) and the typed errors of the core; imports only pydantic."""
