"""One pydantic config per deployment, defaults in one place, overridable by YAML and environment.

Precedence (later wins): the defaults below < a YAML file (``CLASSIFIER_CONFIG`` or ``--config``) < the
``args`` of a Serve config file (``serve run serve_app/serve_config.yaml``) < environment variables
``CLASSIFIER__<field>__<subfield>=<yaml value>``, e.g. ``CLASSIFIER__TEXT_EMBEDDER__MAX_BATCH_SIZE=64`` or
``CLASSIFIER__MODELS='[all-MiniLM-L6-v2]'``. The effective config is logged when the router starts.
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.images import ImageFetchConfig
from classifiers.limits import Limits
from classifiers.registry import ModelSpec, Registry, build_registry

ENV_PREFIX = "CLASSIFIER__"
DEFAULT_MODELS = ["multilingual-e5-small", "all-MiniLM-L6-v2"]


class DeploymentConfig(BaseModel):
    """Serve options every deployment has."""

    model_config = ConfigDict(extra="forbid")

    num_replicas: int | None = Field(default=1, ge=1, description="Fixed replica count; ignored if autoscaling_config is set.")
    autoscaling_config: dict[str, Any] | None = Field(
        default=None, description="Ray Serve autoscaling_config (min_replicas, max_replicas, target_ongoing_requests, ...)."
    )
    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0.1}, description="Resources per replica, e.g. {num_cpus: 0.5, num_gpus: 0.25}."
    )
    max_ongoing_requests: int = Field(default=64, ge=1, description="Requests one replica accepts concurrently.")
    access_log: bool = Field(default=False, description="Log every request this deployment handles (Ray Serve access log).")

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
            "logging_config": {"enable_access_log": self.access_log},
        }
        if self.autoscaling_config:
            opts["autoscaling_config"] = dict(self.autoscaling_config)
        else:
            opts["num_replicas"] = self.num_replicas
        return opts


class EmbedderConfig(DeploymentConfig):
    """An embedder deployment (one per served model)."""

    ray_actor_options: dict[str, Any] = Field(
        default_factory=lambda: {"num_cpus": 0.5}, description="Resources per replica (add num_gpus on GPU nodes)."
    )
    max_batch_size: int = Field(default=32, ge=1, description="Requests @serve.batch coalesces into one model call.")
    batch_wait_timeout_s: float = Field(
        default=0.02, ge=0,
        description="How long a batch waits to fill. 20 ms: at saturation on 2 cores 0.02 s gave +16% over 0.005 s "
        "(docs/benchmarks.md); lower it for latency-sensitive, lightly loaded services.",
    )
    num_threads: int | None = Field(
        default=None, ge=1, description="CPU threads of the engine (OpenMP / torch). Default: all cores of the node."
    )
    device: str | None = Field(default=None, description="torch device for torch engines; default cuda if present.")

    @model_validator(mode="after")
    def _batches_can_fill(self):
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size={self.max_batch_size}: "
                "batches could never fill; raise max_ongoing_requests to at least max_batch_size"
            )
        return self


class RouterConfig(DeploymentConfig):
    """The HTTP ingress (ClassifierRouter)."""

    max_ongoing_requests: int = Field(default=256, ge=1, description="Requests one router replica handles at once.")
    access_log: bool = Field(default=True, description="Log every HTTP request with its status, latency and request id.")
    label_cache_size: int = Field(default=20000, ge=0, description="Label embeddings kept per router replica (LRU).")


class StateConfig(BaseModel):
    """Few-shot classifier state: the shard actors and the durable store behind them."""

    model_config = ConfigDict(extra="forbid")

    store_url: str = Field(
        default="./data/classifiers",
        description="Where classifier state is persisted: a local directory (default; resolved to an absolute path "
        "at start) or an fsspec URL such as s3://bucket/prefix or gs://bucket/prefix for clusters.",
    )
    num_shards: int = Field(default=4, ge=1, description="Named state-shard actors classifier ids are hashed onto.")
    num_cpus: float = Field(default=0.05, ge=0, description="CPU reserved per shard actor.")
    capacity: int = Field(default=2000, ge=1, description="Classifiers a shard keeps in memory (LRU; rest reload from the store).")
    usage_flush_s: float = Field(default=5.0, gt=0, description="How often use counters (used_number/used_at) are persisted.")
    detached: bool = Field(
        default=True, description="Shard actors outlive the router replicas that created them (kept across app redeploys)."
    )

    @field_validator("store_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))


class AppConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    app_name: str = Field(default="classifier", description="Serve application name (for serve.get_app_handle).")
    host: str = Field(default="127.0.0.1", description="HTTP host of `python -m serve_app`.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of `python -m serve_app`.")
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1, description="Models to serve.")
    extra_models: list[ModelSpec] = Field(default_factory=list, description="Registry entries added by the operator.")
    aliases: dict[str, str] = Field(default_factory=dict, description="Extra API names -> served model names.")
    limits: Limits = Field(default_factory=Limits, description="Request limits.")
    router: RouterConfig = Field(default_factory=RouterConfig, description="ClassifierRouter deployment.")
    text_embedder: EmbedderConfig = Field(
        default_factory=EmbedderConfig, description="Defaults for every embedder deployment (text and image models)."
    )
    embedder_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-model changes to `text_embedder`, keyed by model name."
    )
    state: StateConfig = Field(default_factory=StateConfig, description="Few-shot classifier state.")
    images: ImageFetchConfig = Field(
        default_factory=ImageFetchConfig, description="How image inputs are fetched and decoded (docs/images.md)."
    )

    @model_validator(mode="after")
    def _models_known(self):
        self.registry()  # raises naming the unknown model and the known ones
        for name in self.embedder_overrides:
            if name not in self.models:
                raise ValueError(f"embedder_overrides names {name!r}, which is not one of the served models {self.models}")
        for name in self.models:
            self.embedder_config(name)
        return self

    def registry(self) -> Registry:
        return build_registry(self.models, self.extra_models, self.aliases)

    def embedder_config(self, model: str) -> EmbedderConfig:
        merged = _deep_merge(self.text_embedder.model_dump(), self.embedder_overrides.get(model, {}))
        return EmbedderConfig(**merged)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _env_overrides(env: dict[str, str]) -> dict:
    tree: dict = {}
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX) :].split("__") if p]
        node = tree
        for p in path[:-1]:
            node = node.setdefault(p, {})
        node[path[-1]] = yaml.safe_load(raw)
    return tree


def load_config(args: dict | None = None, *, config_file: str | None = None, env: dict | None = None) -> AppConfig:
    env = dict(os.environ if env is None else env)
    merged: dict = {}
    path = config_file or (args or {}).get("config_file") or env.get("CLASSIFIER_CONFIG")
    if path:
        with open(path) as f:
            merged = _deep_merge(merged, yaml.safe_load(f) or {})
    merged = _deep_merge(merged, {k: v for k, v in (args or {}).items() if k != "config_file"})
    merged = _deep_merge(merged, _env_overrides(env))
    return AppConfig(**merged)
