"""The classification core, one sub-package per domain; nothing here imports Ray (see docs/architecture.md).

Layering, bottom to top: protocol -> catalog -> request -> storage -> accounts -> images -> embedding -> zeroshot
-> fewshot. A package imports only from those before it, so every piece is unit-tested in milliseconds and reused
by the Serve deployments, the benchmarks and the evaluation harness alike.
"""
