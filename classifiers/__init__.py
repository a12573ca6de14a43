"""Pure classification logic: request models, model registry, encoders, scoring, learners.

Nothing in this package imports Ray, so every piece is unit-tested in milliseconds and reused by
the Serve deployments, the benchmarks and the evaluation harness alike.
"""
