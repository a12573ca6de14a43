"""The service in the foreground, behind ``python -m serve_app [--config FILE] [--host H] [--port P] [--require-keys]``.

Starts a new local Ray instance (or joins ``RAY_ADDRESS``), deploys the app, serves HTTP until Ctrl-C or
SIGTERM, then shuts Serve and Ray down cleanly. Ray Serve's switches come from the environment, where
``serve_app.__main__`` puts the defaults (``serve_app.switches``) before Ray is imported.

Anonymous mode (no keys) is for one machine: on a host other than loopback it refuses to start unless
``--allow-anonymous`` says that is meant.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

import ray
from ray import serve

from classifiers.accounts.keys import is_loopback
from serve_app.app import bind_app
from serve_app.config import load_config

logger = logging.getLogger("serve_app")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
    parser.add_argument("--config", help="YAML app config (default: $CLASSIFIER_CONFIG, else built-in defaults)")
    parser.add_argument("--host", help="HTTP host (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default from config: 8000)")
    parser.add_argument("--require-keys", action="store_true", help="Every /v1/* route needs an API key (./scripts/keys).")
    parser.add_argument("--allow-anonymous", action="store_true", help="Allow anonymous mode on a non-loopback host.")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides: dict = {k: v for k, v in {"host": opts.host, "port": opts.port}.items() if v is not None}
    accounts = {k: True for k, on in {"require_keys": opts.require_keys, "allow_anonymous": opts.allow_anonymous}.items() if on}
    if accounts:
        overrides["accounts"] = accounts
    cfg = load_config(overrides, config_file=opts.config)
    logger.info("effective config: %s", cfg.model_dump_json())
    if not cfg.accounts.require_keys:
        if not is_loopback(cfg.host) and not cfg.accounts.allow_anonymous:
            parser.exit(2, f"refusing to serve anonymously on {cfg.host}: anyone who can reach it would share one account. "
                           "Use --require-keys (create keys with ./scripts/keys), or --allow-anonymous if that is meant.\n")
        logger.warning("ANONYMOUS mode: no API keys; every caller is one account (rate limits per client IP)")

    # Handlers first: a Ctrl-C while Ray and the app start up stops them cleanly once they are up (set again
    # below, in case Ray installed its own while starting).
    stop = threading.Event()

    def on_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    on_signals()
    # Ray Serve's switches (RAY_SERVE_*: serve_app.switches' defaults plus any given) must reach every worker. A
    # Ray instance started here inherits this process's environment, so its workers have them (and a runtime_env
    # would keep the workers Ray starts ahead from serving the replicas: each would start its own, ~1 s more);
    # joining a cluster, they travel in the job's runtime_env.
    switches = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    own_ray = "RAY_ADDRESS" not in os.environ
    started = time.monotonic()
    if not own_ray:
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env={"env_vars": switches} if switches else None)
    else:
        # A new instance ("local"): never attach to another Ray that happens to run on this machine.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING)
    ray_up = time.monotonic()
    logger.info("Ray Serve switches: %s", switches)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve_up = time.monotonic()
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")
    deployed = time.monotonic()
    on_signals()
    logger.info("serving on http://%s:%d  (Ctrl-C to stop); started in %.1f s: ray.init %.1f s, serve.start %.1f s, "
                "deploy %.1f s", cfg.host, cfg.port, deployed - started, ray_up - started, serve_up - ray_up,
                deployed - serve_up)
    stop.wait()
    logger.info("shutting down")
    serve.shutdown()  # replicas drain and send their pending usage to the ledger first
    try:
        flush_ledger(cfg)
    except Exception as exc:  # noqa: BLE001
        logger.warning("usage ledger not flushed at shutdown: %s", exc)
    ours = descendants(os.getpid()) if own_ray else {}
    ray.shutdown()
    stop_leftovers(ours)


def descendants(root: int) -> dict[int, str]:
    """Every live process descending from ``root``, with its start time (to tell a reused PID apart), from /proc
    (Linux); elsewhere none."""
    parents, started = {}, {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return {}
    for entry in entries:
        if entry.isdigit():
            try:
                raw = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = raw[raw.rindex(")") + 2:].split()  # the command name may contain spaces and parentheses
            parents[int(entry)], started[int(entry)] = int(fields[1]), fields[19]
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found[child] = started[child]
                todo.append(child)
    return found


def stop_leftovers(processes: dict[int, str], grace_s: float = 2.0) -> None:
    """End what is left, after ``ray.shutdown``, of the processes this run's Ray instance started.

    Ray's per-node agents (dashboard and runtime-env agents, children of the raylet) outlive the node by a minute
    or two, retrying to report the raylet's exit to a GCS that is gone, and keep their ports meanwhile; the next
    start of the service on this machine then waited ~3.5 s (of its ~15 s) for its own dashboard agent to give up
    binding port 52365. SIGTERM, then SIGKILL after ``grace_s``; a PID reused since (another start time) is left
    alone."""

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 0.0)):
        left = still_running(processes)
        if not left:
            return
        for pid in left:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + wait_s
        while still_running(processes) and time.monotonic() < deadline:
            time.sleep(0.1)


def still_running(processes: dict[int, str]) -> list[int]:
    """Those of ``processes`` (pid -> start time, from :func:`descendants`) still running: not exited, not a
    zombie, and not a new process under a reused PID."""
    out = []
    for pid, start in processes.items():
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        if fields[19] == start and fields[0] != "Z":
            out.append(pid)
    return out


def flush_ledger(cfg) -> None:
    """Persist the accounts actor's ledger now, so a clean stop loses no usage."""
    from classifiers.storage.store import open_blob_store
    from deployments.accounts_actor import RemoteAccounts

    accounts = RemoteAccounts(open_blob_store(cfg.state.store_url), cfg.accounts)
    try:
        actor = ray.get_actor(accounts.name, namespace="ray-classifier")
    except ValueError:  # created on the first request that needs it: no request, no ledger to flush
        return
    ray.get(actor.flush.remote(), timeout=10)
