"""HTTP zero-shot throughput at saturation vs the raw in-process encoder at its best batch size.

For each embedded model, in one run:
  raw   = texts/s of the model's encoder called in this process, best over batch sizes;
  http  = inputs/s through the real Serve app (proxy -> Ingress -> TextEmbedder, @serve.batch),
          with labels cached (a repeated label set costs no model call), for several request sizes;
  ratio = http / raw (target >= 0.85).

    PYTHONPATH=. .venv/bin/python bench/bench_zeroshot.py [--models ...] [--n 2000]
"""
from __future__ import annotations

import argparse
import asyncio
import time

from bench.common import clinc_texts, load, saturate, start_app, stop_app

LABELS = ["banking and money", "travel and transport", "cooking and food", "small talk", "home and utilities"]


def raw_throughput(model: str, texts: list[str], batch_sizes: list[int]) -> tuple[float, int]:
    from classifiers.engines import load_encoder
    from classifiers.registry import build_registry

    enc = load_encoder(build_registry([model]).get(model))
    enc.encode(texts[:64], "input")  # warm-up
    best = (0.0, 0)
    for bs in batch_sizes:
        start = time.perf_counter()
        for i in range(0, len(texts), bs):
            enc.encode(texts[i : i + bs], "input")
        rate = len(texts) / (time.perf_counter() - start)
        print(f"  raw {model} batch={bs:4d}: {rate:8.1f} texts/s")
        best = max(best, (rate, bs))
    del enc
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["multilingual-e5-small", "all-MiniLM-L6-v2"])
    ap.add_argument("--n", type=int, default=0, help="texts per measurement (default: 600 for e5, 3000 for MiniLM)")
    ap.add_argument("--request-sizes", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--concurrency", type=int, default=64)
    args = ap.parse_args()

    rows = []
    for model in args.models:
        n = args.n or (600 if "e5" in model else 3000)
        texts = clinc_texts(n)
        raw, best_bs = raw_throughput(model, texts, [1, 8, 32, 64, 128])
        url = start_app([model])
        try:
            warm = [{"model": model, "input": texts[:8], "labels": LABELS}]
            asyncio.run(saturate(url, "/v1/classify", warm, 1))
            for size in args.request_sizes:
                payloads = [{"model": model, "input": texts[i : i + size], "labels": LABELS} for i in range(0, n, size)]
                conc = max(2, min(args.concurrency, 8 * 32 // size))
                rate, failed, client = load(url, "/v1/classify", payloads, conc)
                http = rate * size
                rows.append((model, best_bs, raw, size, conc, http, http / raw, failed))
                print(f"  http ({client}) {model} inputs/request={size:3d} concurrency={conc:3d}: {http:8.1f} inputs/s  "
                      f"ratio {http / raw:.2f}")
        finally:
            stop_app()

    print("\n| model | raw texts/s (best batch) | inputs/request | concurrency | HTTP inputs/s | ratio |")
    print("|---|---|---|---|---|---|")
    for model, bs, raw, size, conc, http, ratio, failed in rows:
        flag = "" if not failed else f" ({failed} failed)"
        print(f"| {model} | {raw:.0f} ({bs}) | {size} | {conc} | {http:.0f}{flag} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
