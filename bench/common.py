"""Helpers shared by the benchmarks: real texts, a local Serve app, a saturating async HTTP load."""
from __future__ import annotations

import asyncio
import csv
import json
import shutil
import socket
import subprocess
import tempfile
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

    from serve_app.app import bind_app
    from serve_app.config import load_config

    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}})
    port = free_port()
    cfg = load_config({"port": port, "models": models, **overrides}, env={})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def stop_app():
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def load(url: str, path: str, payloads: list[dict], concurrency: int, seconds: float = 20) -> tuple[float, int, str]:
    """Saturating load; returns (payloads completed per second, failures, client).

    Uses `wrk` (a C load generator, `apt-get install wrk`) when installed: on a 2-core machine a Python client
    takes CPU the server needs (measured: httpx costs the service ~30% of its 1-input throughput). Falls back
    to an asyncio httpx client that sends every payload once."""
    if shutil.which("wrk"):
        bodies = [json.dumps(p).replace("]]", "] ]") for p in payloads]
        lua = "bodies = {" + ",".join(f"[[{b}]]" for b in bodies) + "}\n" + (
            "i = 0\nrequest = function()\n i = i % #bodies + 1\n"
            f' return wrk.format("POST", "{path}", {{["Content-Type"]="application/json"}}, bodies[i])\nend\n'
            "done = function(s, l, r)\n io.write(string.format(\"REQS %d %f %d %d\\n\", s.requests, s.duration / 1e6,"
            " s.errors.status, s.errors.timeout))\nend\n"
        )
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
            f.write(lua)
        out = subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--timeout", "60s", "-s", f.name, url],
                             capture_output=True, text=True, check=True).stdout
        _, reqs, secs, status_errors, timeouts = next(line for line in out.splitlines() if line.startswith("REQS")).split()
        return int(reqs) / float(secs), int(status_errors) + int(timeouts), "wrk"
    secs, failed = asyncio.run(saturate(url, path, payloads, concurrency))
    return len(payloads) / secs, failed, "httpx"


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
