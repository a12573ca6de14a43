"""Helpers shared by the benchmarks: real texts, a local Serve app, a saturating async HTTP load."""
from __future__ import annotations

import asyncio
import csv
import socket
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLINC = ROOT.parent / "shared" / "data" / "text"


def clinc_texts(n: int) -> list[str]:
    """Real utterances (CLINC150 test split), repeated with a suffix if more are needed."""
    with open(CLINC / "test.csv", newline="") as f:
        base = [row["text"] for row in csv.DictReader(f)]
    return [base[i % len(base)] + ("" if i < len(base) else f" ({i // len(base)})") for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_app(models: list[str], **overrides):
    """Start Ray + the real Serve app on a free 127.0.0.1 port; returns the base URL."""
    import ray
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import load_config

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    cfg = load_config({"port": port, "models": models, **overrides}, env={})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config=cfg), name=cfg.app_name, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop_app():
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


async def saturate(url: str, path: str, payloads: list[dict], concurrency: int) -> tuple[float, int]:
    """Send every payload with `concurrency` requests in flight; returns (seconds, failures)."""
    import httpx

    queue = list(reversed(payloads))
    failures = 0

    async def worker(client):
        nonlocal failures
        while queue:
            r = await client.post(path, json=queue.pop())
            failures += r.status_code != 200

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        return time.perf_counter() - start, failures
