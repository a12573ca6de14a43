"""Jina's wire format and the informational answers (pydantic models), and the typed errors of the core; imports
only pydantic, so the client's distribution ships this package as it is (docs/architecture.md)."""
