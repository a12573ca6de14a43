"""Zero-shot classification: labels embedded like inputs, cosine scores, out-of-scope abstain, the service."""
