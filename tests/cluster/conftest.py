"""The cluster tests (`python -m pytest -m cluster tests/cluster`): a multi-node Ray cluster on this machine that
mirrors cluster.yaml (harness.py), the app deployed on it from the GPU Serve config with `serve deploy`, and an
S3-compatible store on 127.0.0.1.

They run in a pytest process of their own: the cluster's start and shutdown run `ray stop --force`, which ends
every Ray process on the machine, including the session-wide Ray of tests/conftest.py. So a run that selects any
other test deselects these (with a note); `scripts/test` runs them in a second pytest invocation.

Tests record what they measured with the ``record`` fixture; the run ends with a "cluster summary"
section: the node of every replica and actor, the scale-up and scale-down times, the recovery times after the node
loss, what the rolling upgrade cost, and which nodes shared each store.
"""
from __future__ import annotations

import logging
import os
import socket

import pytest

from tests.cluster.harness import CLUSTER_YAML, ClusterApp, ProjectCluster

SUMMARY: list[tuple[str, str]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _is_cluster(item) -> bool:
    return item.get_closest_marker("cluster") is not None


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected what they do
def pytest_collection_modifyitems(config, items):
    """Deselect the cluster tests from a run that also selected other tests (see the module docstring)."""
    cluster = [i for i in items if _is_cluster(i)]
    if cluster and len(cluster) < len(items):
        config.hook.pytest_deselected(items=cluster)
        items[:] = [i for i in items if not _is_cluster(i)]
        config._cluster_deselected = len(cluster)


class Recorder:
    def __init__(self, test: str):
        self.test = test

    def __call__(self, line: str) -> None:
        SUMMARY.append((self.test, line))


@pytest.fixture
def record(request) -> Recorder:
    return Recorder(request.node.name)


def pytest_terminal_summary(terminalreporter, config):
    tr = terminalreporter
    if getattr(config, "_cluster_deselected", 0):
        tr.write_line(f"{config._cluster_deselected} cluster tests deselected: they run alone, "
                      "`python -m pytest -m cluster tests/cluster` (scripts/test runs them after the rest)")
    if not SUMMARY:
        return
    tr.section("cluster summary")
    last = None
    for test, line in SUMMARY:
        if test != last:
            tr.write_line(f"[{test}]")
            last = test
        tr.write_line(f"  {line}")


@pytest.fixture(scope="session")
def s3_store():
    """A real S3-compatible server on 127.0.0.1 (moto's ThreadedMotoServer) with one bucket; s3fs is the fsspec
    backend the app uses for s3:// URLs. Endpoint and credentials reach every Ray process through the environment
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), the way credentials reach a real cluster's nodes."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per S3 call otherwise
    port = free_port()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "cluster-test",
           "AWS_SECRET_ACCESS_KEY": "cluster-test", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket="ray-classifier-state")
        yield "s3://ray-classifier-state/ray-classifier"
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cluster(s3_store, tmp_path_factory):
    """The cluster of cluster.yaml's node types (harness.ProjectCluster); every node's processes inherit this
    environment (the proxies' Jina error bodies, the S3 endpoint and credentials). Shut down even on failure."""
    import ray

    from serve_app.proxy_errors import proxy_env

    os.environ.update({**proxy_env(), "TOKENIZERS_PARALLELISM": "false", "RAY_USAGE_STATS_ENABLED": "0"})
    logs = tmp_path_factory.mktemp("cluster-logs")
    c = ProjectCluster(CLUSTER_YAML, dashboard_port=free_port(), log_dir=logs)
    try:
        c.start()
        ray.init(address="auto", logging_level=logging.WARNING, log_to_driver=False)
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="session")
def app(cluster, tmp_path_factory) -> ClusterApp:
    """The app from deploy/serve_config.gpu.yaml (harness.serve_config), over a local-directory store that every
    node's processes share (one machine's disk standing in for a shared filesystem)."""
    store = tmp_path_factory.mktemp("cluster-store")
    a = ClusterApp(free_port(), cluster.dashboard_port, tmp_path_factory.mktemp("serve-configs"), str(store))
    a.deploy(a.config())
    return a
