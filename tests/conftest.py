"""Shared fixtures. The `serve_url` fixture starts the REAL Ray Serve app (embedded models) once per test
session on a free 127.0.0.1 port and shuts Ray down at the end; tests talk plain HTTP to it."""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
SHARED_DATA = ROOT.parent / "shared" / "data"

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def encoders():
    """The two embedded models, loaded in-process through the real loading code (cached per session)."""
    from classifiers.engines import load_encoder
    from classifiers.registry import build_registry

    reg = build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"])
    return {name: load_encoder(reg.get(name), num_threads=2) for name in reg.names()}


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray

    ray.init(
        num_cpus=4,  # logical: replicas take fractions; the machine has 2 real cores
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def serve_url(ray_cluster, tmp_path_factory):
    from ray import serve

    from serve_app.app import build_app
    from serve_app.config import load_config

    port = free_port()
    cfg = load_config({"port": port}, env={})
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(config=cfg), name=cfg.app_name, route_prefix="/")
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="session")
def http(serve_url):
    import httpx

    with httpx.Client(base_url=serve_url, timeout=120) as client:
        yield client
