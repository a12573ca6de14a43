"""What keys and rate limits cost a request: classify latency with vs without them, measured in one run.

Two copies of the app run side by side in one Serve instance, identical except for `accounts`:
``/open`` (anonymous mode, rate limits off) and ``/keys`` (``require_keys``, rate limits on with a tier far above
the load, a real key sent on every request). Sequential requests (one in flight: latency, not throughput),
rounds interleaved open/keys so drift hits both alike. Prints p50/p90 per side and the ratio keys/open for
zero-shot and few-shot classify. Target (accounts issue): p50 ratio <= 1.05.

    .venv/bin/python bench/bench_accounts.py [--requests 200] [--rounds 3]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, clinc_texts, free_port  # noqa: E402

MODEL = "all-MiniLM-L6-v2"
BIG = {"rpm": 10_000_000, "tpm": 10_000_000_000}


def deploy(prefix: str, store: str, accounts: dict):
    from ray import serve

    from serve_app.app import bind_app
    from serve_app.config import load_config

    cfg = load_config({"app_name": prefix.strip("/"), "models": [MODEL], "state": {"store_url": store}, "accounts": accounts,
                       "ingress": {"access_log": False}}, env={})
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix=prefix)
    return cfg


def latencies(client: httpx.Client, path: str, bodies: list[dict], headers: dict) -> list[float]:
    out = []
    for body in bodies:
        t = time.perf_counter()
        r = client.post(path, json=body, headers=headers)
        out.append(time.perf_counter() - t)
        assert r.status_code == 200, r.text
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="requests per side per round per mode")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import ray
    from ray import serve

    from classifiers.accounts.keys import AccountStore
    from classifiers.storage.store import LocalDirStore

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    tmp = Path(tempfile.mkdtemp(prefix="bench-accounts-"))
    try:
        deploy("/open", str(tmp / "open"), {"rate_limits": False})
        deploy("/keys", str(tmp / "keys"), {"require_keys": True, "tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train")}}})
        _, key = AccountStore(LocalDirStore(tmp / "keys")).create_key("bench")
        sides = {"open": ("/open", {}), "keys": ("/keys", {"Authorization": f"Bearer {key}"})}
        texts = clinc_texts(args.requests)
        labels = ["weather", "banking", "travel", "cooking", "music"]
        zs = [{"model": MODEL, "input": [t], "labels": labels} for t in texts]
        results: dict[tuple[str, str], list[float]] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            fewshot = {}
            for side, (prefix, headers) in sides.items():
                train = [{"text": t, "label": labels[i % len(labels)]} for i, t in enumerate(clinc_texts(40))]
                r = client.post(f"{prefix}/v1/train", json={"model": MODEL, "input": train}, headers=headers)
                assert r.status_code == 200, r.text
                fewshot[side] = [{"classifier_id": r.json()["classifier_id"], "input": [t]} for t in texts]
                latencies(client, f"{prefix}/v1/classify", zs[:20] + fewshot[side][:20], headers)  # warm up
            for _ in range(args.rounds):
                for side, (prefix, headers) in sides.items():
                    results.setdefault((side, "zero-shot"), []).extend(latencies(client, f"{prefix}/v1/classify", zs, headers))
                    results.setdefault((side, "few-shot"), []).extend(latencies(client, f"{prefix}/v1/classify", fewshot[side], headers))
        print(f"{MODEL}, 1 input per request, one request in flight, {args.rounds} interleaved rounds x {args.requests} requests")
        print(f"{'mode':<10} {'side':<5} {'p50 ms':>8} {'p90 ms':>8}")
        for mode in ("zero-shot", "few-shot"):
            p = {}
            for side in sides:
                lat = np.array(results[(side, mode)]) * 1000
                p[side] = (np.percentile(lat, 50), np.percentile(lat, 90))
                print(f"{mode:<10} {side:<5} {p[side][0]:8.2f} {p[side][1]:8.2f}")
            print(f"{mode:<10} ratio keys/open: p50 {p['keys'][0] / p['open'][0]:.3f}, p90 {p['keys'][1] / p['open'][1]:.3f}")
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
