"""Benchmarks and quality evaluations, driving the service from outside: the bench suite (its systems, load generator,
CPU accounting, targets, report and plots), the focused benchmarks (``bench_*.py``), the CPU profile, the GPU engine
check (``bench/gpu``), and the evaluation harness (``evaluation.py``, ``eval_*.py``) that writes ``docs/eval/``."""
