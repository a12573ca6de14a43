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
    # Ray Serve's switches (RAY_SERVE_*: serve_app.switches' defaults plus any given) must reach every worker.
    switches = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    runtime_env = {"env_vars": switches} if switches else None
    if "RAY_ADDRESS" in os.environ:
        ray.init(address=os.environ["RAY_ADDRESS"], runtime_env=runtime_env)
    else:
        # A new instance ("local"): never attach to another Ray that happens to run on this machine.
        ray.init(address="local", include_dashboard=False, logging_level=logging.WARNING, runtime_env=runtime_env)
    logger.info("Ray Serve switches: %s", switches)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")
    on_signals()
    logger.info("serving on http://%s:%d  (Ctrl-C to stop)", cfg.host, cfg.port)
    stop.wait()
    logger.info("shutting down")
    serve.shutdown()  # replicas drain and send their pending usage to the ledger first
    try:
        flush_ledger(cfg)
    except Exception as exc:  # noqa: BLE001
        logger.warning("usage ledger not flushed at shutdown: %s", exc)
    ray.shutdown()


def flush_ledger(cfg) -> None:
    """Persist the accounts actor's ledger now, so a clean stop loses no usage."""
    from classifiers.storage.store import open_blob_store
    from deployments.accounts_actor import RemoteAccounts

    accounts = RemoteAccounts(open_blob_store(cfg.state.store_url), cfg.accounts)
    actor = ray.get_actor(accounts.name, namespace="ray-classifier")
    ray.get(actor.flush.remote(), timeout=10)
