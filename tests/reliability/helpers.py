"""Shared by the reliability tests: deploying a variant of the app, finding and killing its actors."""
from __future__ import annotations

import time

import httpx
import ray
from ray import serve

from serve_app.app import bind_app
from serve_app.config import load_config

MODEL = "all-MiniLM-L6-v2"
ERROR_FIELDS = {"code", "detail", "request_id"}
BIG = {"rpm": 1_000_000, "tpm": 1_000_000_000}  # limits on (their code path runs) but never reached


def deploy_variant(name: str, store: str, *, blocking: bool = True, **overrides):
    """A MiniLM-only copy of the app under /<name>, with its own store (rate limits far above the load unless
    `accounts` is overridden); returns its config."""
    settings = {"app_name": name, "models": [MODEL], "state": {"store_url": store, "num_shards": 2},
                "accounts": {"tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train", "embeddings")}}}}
    settings.update(overrides)
    cfg = load_config(settings, env={})
    if blocking:
        serve.run(bind_app(cfg), name=name, route_prefix=f"/{name}")
    else:  # returns once the controller has the new version; replicas roll over meanwhile
        serve._run(bind_app(cfg), name=name, route_prefix=f"/{name}", _blocking=False)
    return cfg


def replica_actors(app: str, deployment: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]


def kill_replica(app: str, deployment: str) -> str:
    name = replica_actors(app, deployment)[0]
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
    return name


def shard_actors(store_digest: str) -> list[str]:
    return [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"classifier-shard-{store_digest}")]


def kill_named(name: str, *, restart: bool = True) -> None:
    ray.kill(ray.get_actor(name, namespace="ray-classifier"), no_restart=not restart)


def wait_healthy(client: httpx.Client, body: dict, timeout_s: float = 30.0, headers: dict | None = None) -> float:
    """Seconds until /ready and a real classify answer 200 (fails the test after timeout_s)."""
    start = time.time()
    while time.time() - start < timeout_s:
        try:
            if client.get("/ready").status_code == 200 and client.post("/v1/classify", json=body, headers=headers).status_code == 200:
                return time.time() - start
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"not healthy within {timeout_s}s")


def is_error_body(resp: httpx.Response) -> bool:
    try:
        return ERROR_FIELDS <= set(resp.json())
    except ValueError:
        return False
