"""Few-shot classification: the online learner, the repository protocol, the classifier table and the service."""
