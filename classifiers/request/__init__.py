"""Request checking: the configured limits and the parsing of Jina's flexible `input` field into typed items."""
