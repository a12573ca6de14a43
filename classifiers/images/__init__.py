"""Images from request strings: fetch policy and SSRF-safe fetching, bounded decoding, pixel budgets, streaming."""
