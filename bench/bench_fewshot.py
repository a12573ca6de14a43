"""Few-shot state at scale, and the cost of num_iters.

1. Memory per classifier and classify latency with 10 vs 10,000 classifiers (target: flat within 10%).
   Classifiers are created in the real state-shard actors (Ray, 4 shards, local store in a temp dir) from
   real CLINC150 embeddings; memory is the shards' resident set size (RSS, /proc) growth per classifier and
   the in-memory state they report; latency is the ShardedRepo `classify` call (one actor call, one 384-d
   input) as the ingress makes it, p50/p95 over random classifiers.
2. /train cost with num_iters=1 vs 10 (target: within 10%): the same 32-example /train requests over HTTP
   through the real app, alternating num_iters, on all-MiniLM-L6-v2.

    PYTHONPATH=. .venv/bin/python bench/bench_fewshot.py [--classifiers 10000]
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import tempfile
import time
import uuid

import numpy as np

from bench.common import CLINC, ROOT, start_app, stop_app


def clinc(n_per_label: int = 6, labels: int = 16) -> tuple[list[str], list[str]]:
    rows = list(csv.DictReader(open(CLINC / "train.csv", newline="")))
    keep = sorted({r["label"] for r in rows})[:labels]
    texts, ys = [], []
    for lab in keep:
        mine = [r["text"] for r in rows if r["label"] == lab][:n_per_label]
        texts += mine
        ys += [lab] * len(mine)
    return texts, ys


async def state_scale(counts: list[int], shards: int) -> list[tuple]:
    from classifiers.catalog.registry import build_registry
    from classifiers.embedding.engines import load_encoder
    from classifiers.fewshot.repository import NewClassifier, TrainBatch
    from classifiers.request.limits import Limits
    from classifiers.storage.store import LocalDirStore
    from deployments.classifier_shards import ShardedRepo
    from deployments.config import StateConfig

    texts, ys = clinc()
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    enc = load_encoder(spec)
    X = enc.encode(texts, "input")
    label_vecs = dict(zip(sorted(set(ys)), enc.encode([y.replace("_", " ") for y in sorted(set(ys))], "label"), strict=True))
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as store:
        settings = StateConfig(store_url=store, num_shards=shards, capacity=10**6, usage_flush_s=60, num_cpus=0.05, detached=False)
        repo = ShardedRepo(LocalDirStore(store), settings, Limits(max_classifiers_per_owner=10**6), generation=time.time_ns())
        base = await repo.stats()
        rss0 = sum(s["rss_bytes"] for s in base)
        ids: list[str] = []
        owners: list[str] = []
        for target in counts:
            while len(ids) < target:
                creates = []
                for _ in range(min(200, target - len(ids))):
                    pick = rng.choice(len(ys), size=24, replace=False)  # 24 examples over up to 16 classes
                    y = [ys[i] for i in pick]
                    owner = f"owner-{len(owners) % 50}"
                    new = NewClassifier(owner=owner, model=spec.name, access="private", dim=X.shape[1], score_scale=spec.score_scale)
                    batch = TrainBatch(X[pick], y, 1.0, {lab: label_vecs[lab] for lab in set(y)}, uuid.uuid4().hex)
                    creates.append(repo.create(new, batch))
                    owners.append(owner)
                ids += [out.classifier_id for out in await asyncio.gather(*creates)]
            stats = await repo.stats()
            rss = sum(s["rss_bytes"] for s in stats)
            state = sum(s["memory_bytes"] for s in stats)
            q = X[:1]

            async def latencies(pool: int, ids: list[str] = ids, q: np.ndarray = q) -> list[float]:
                out = []
                for _ in range(1000):
                    j = int(rng.integers(pool))
                    t0 = time.perf_counter()
                    await repo.classify(ids[j], owners[j], q)
                    out.append(time.perf_counter() - t0)
                return out

            lat_ok = await latencies(len(ids))
            p50 = statistics.median(lat_ok) * 1e3
            p95 = float(np.percentile(lat_ok, 95)) * 1e3
            rows.append((target, (rss - rss0) / target, state / target, p50, p95))
            if target == counts[-1]:  # same cluster, same moment: only the first 10 classifiers are used
                hot = await latencies(10)
                rows.append((f"{target} (calls to 10 of them)", float("nan"), float("nan"),
                             statistics.median(hot) * 1e3, float(np.percentile(hot, 95)) * 1e3))
            print(f"  {target:6d} classifiers: RSS growth {(rss - rss0) / target / 1024:8.1f} KiB/classifier, "
                  f"predictor {state / target / 1024:7.1f} KiB/classifier, classify p50 {p50:.2f} ms p95 {p95:.2f} ms")
    return rows


async def train_cost(url: str, rounds: int) -> dict[int, float]:
    import httpx

    texts, ys = clinc(n_per_label=4, labels=8)
    items = [{"text": t, "label": y} for t, y in zip(texts, ys, strict=True)]
    async with httpx.AsyncClient(base_url=url, timeout=300) as c:
        r = await c.post("/v1/train", json={"model": "all-MiniLM-L6-v2", "input": items})
        cid = r.json()["classifier_id"]
        times: dict[int, list[float]] = {1: [], 10: []}
        for i in range(rounds):
            for iters in ((1, 10) if i % 2 == 0 else (10, 1)):
                batch = [{"text": f"{it['text']} ({i})", "label": it["label"]} for it in items]
                t0 = time.perf_counter()
                r = await c.post("/v1/train", json={"classifier_id": cid, "input": batch, "num_iters": iters})
                times[iters].append(time.perf_counter() - t0)
                assert r.status_code == 200, r.text
        await c.delete(f"/v1/classifiers/{cid}")
    return {k: statistics.median(v) * 1e3 for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifiers", type=int, default=10000)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--train-rounds", type=int, default=30)
    args = ap.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as store:
        url = start_app(["all-MiniLM-L6-v2"], state={"store_url": store, "num_shards": 2})
        try:
            cost = asyncio.run(train_cost(url, args.train_rounds))
        finally:
            stop_app()
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})  # a fresh cluster: only the benchmark's shards
    try:
        rows = asyncio.run(state_scale([10, 1000, args.classifiers], args.shards))
    finally:
        ray.shutdown()
    print("\n| classifiers | shard RSS growth / classifier | in-memory predictor / classifier | classify p50 | classify p95 |")
    print("|---|---|---|---|---|")
    for n, rss, state, p50, p95 in rows:
        print(f"| {n} | {rss / 1024:.1f} KiB | {state / 1024:.1f} KiB | {p50:.2f} ms | {p95:.2f} ms |")
    small, mid, big = rows[0], rows[1], rows[2]
    marginal = (big[1] * big[0] - mid[1] * mid[0]) / (big[0] - mid[0])
    print(f"\nclassify p50 ratio {big[0]} vs {small[0]} classifiers: {big[3] / small[3]:.2f} (target <= 1.10); "
          f"within the 10,000-classifier cluster, random vs 10 hot classifiers: {big[3] / rows[3][3]:.2f}")
    print(f"in-memory predictor per classifier, {big[0]} vs {small[0]}: {big[2] / small[2]:.3f}; shard RSS growth per "
          f"classifier between {mid[0]} and {big[0]}: {marginal / 1024:.1f} KiB (at 10 classifiers RSS growth is allocator noise)")
    print(f"/train (32 examples, HTTP) median: num_iters=1 {cost[1]:.1f} ms, num_iters=10 {cost[10]:.1f} ms, "
          f"ratio {cost[10] / cost[1]:.2f} (target within 10%)")


if __name__ == "__main__":
    main()
