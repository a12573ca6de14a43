"""The engine-level GPU check (docs/benchmarks_gpu.md): the served architectures with random weights, run through
the project's own engine code (``classifiers/embedding/engines``) for texts/s, tokens/s and MFU, and the CPU cores
per GPU the service needs. ``./scripts/gpu_check`` runs it; ``python -m bench.gpu --cpu-smoke`` runs it on CPU.

Modules: ``models`` (architectures, generated tokenizer, FLOPs, GPU peaks), ``engine`` (cells, timing, the run),
``report`` (cores per GPU, JSON and markdown), ``prepare`` (the wheels and assets that travel to a GPU machine).
"""
