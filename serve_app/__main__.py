"""Run the service in the foreground: ``python -m serve_app [--config FILE] [--host H] [--port P]``.

Starts a local Ray instance (or joins ``RAY_ADDRESS``), deploys the app, serves HTTP until Ctrl-C or
SIGTERM, then shuts Serve and Ray down cleanly.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading

import ray
from ray import serve

from serve_app.app import bind_app
from serve_app.config import load_config

logger = logging.getLogger("serve_app")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serve_app", description=__doc__)
    parser.add_argument("--config", help="YAML app config (default: $CLASSIFIER_CONFIG, else built-in defaults)")
    parser.add_argument("--host", help="HTTP host (default from config: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="HTTP port (default from config: 8000)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    overrides = {k: v for k, v in {"host": opts.host, "port": opts.port}.items() if v is not None}
    cfg = load_config(overrides, config_file=opts.config)
    logger.info("effective config: %s", cfg.model_dump_json())

    if "RAY_ADDRESS" in os.environ:
        ray.init(address=os.environ["RAY_ADDRESS"])
    else:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/")
    logger.info("serving on http://%s:%d  (Ctrl-C to stop)", cfg.host, cfg.port)

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    logger.info("shutting down")
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
