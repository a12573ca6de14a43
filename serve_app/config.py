"""One pydantic config per deployment, defaults in one place, overridable by YAML and environment.

Precedence (later wins): the defaults below < a YAML file (``CLASSIFIER_CONFIG`` or ``--config``) < the
``args`` of a Serve config file (``serve run serve_app/serve_config.yaml``) < environment variables
``CLASSIFIER__<field>__<subfield>=<yaml value>``, e.g. ``CLASSIFIER__EMBEDDER__MAX_BATCH_SIZE=64`` or
``CLASSIFIER__MODELS='[all-MiniLM-L6-v2]'``. The effective config is logged at start (runner and ingress).
"""
from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.accounts.gate import AccountsConfig
from classifiers.catalog.registry import ModelSpec, Registry, build_registry
from classifiers.images.config import ImageFetchConfig
from classifiers.request.limits import Limits
from deployments.config import DeploymentConfig, EmbedderConfig, StateConfig

ENV_PREFIX = "CLASSIFIER__"
# Added to the ingress's request timeout for a stopping replica's drain bound: the time between the ingress
# giving up on a request (504) and Serve killing a replica that still holds it.
DRAIN_MARGIN_S = 10.0
DEFAULT_MODELS = ["multilingual-e5-small", "all-MiniLM-L6-v2"]


class IngressConfig(DeploymentConfig):
    """The HTTP ingress deployment (`Ingress`): routes, validation, zero-shot scoring, few-shot orchestration."""

    max_ongoing_requests: int = Field(default=256, ge=1, description="Requests one ingress replica handles at once.")
    access_log: bool = Field(default=True, description="Log every HTTP request with its status, latency and request id.")
    label_cache_size: int = Field(default=20000, ge=0, description="Label embeddings kept per ingress replica (LRU).")
    label_cache_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0, description="Memory the label cache may use per ingress replica (LRU by bytes too)."
    )
    max_inflight_body_bytes: int = Field(
        default=256 * 1024 * 1024, gt=0,
        description="Request bodies one ingress replica holds at once, counted as they arrive; a request that "
        "would go over it gets a quick 503 (so 192 concurrent 64 MiB uploads cannot exhaust a replica's memory).",
    )
    max_inflight: int = Field(
        default=192, ge=1,
        description="Requests one ingress replica works on at once; beyond it, a quick 503 SERVICE_UNAVAILABLE "
        "(load shedding with Jina's error body) instead of a queue. Keep it below max_ongoing_requests.",
    )
    max_inflight_per_client: int = Field(
        default=32, ge=1,
        description="Requests one client (account, or IP when anonymous) may have in flight on one replica; beyond "
        "it, 429 RATE_REQUEST_LIMIT_EXCEEDED: no client can take a replica's whole capacity.",
    )
    embed_calls_in_flight: int = Field(
        default=4, ge=1,
        description="Handle calls to one model's embedders a replica keeps in flight for small requests; requests "
        "arriving while that many are out go together in the next call (serve_app/embedders.py). Raise it with the "
        "embedder replicas per ingress replica (each call keeps one embedder replica busy).",
    )
    body_timeout_s: float = Field(
        default=10.0, gt=0,
        description="A request body must arrive within this long plus one second per `min_body_bytes_per_s` that "
        "have arrived, else 408 INPUT_REQUEST_TIMEOUT and the connection is closed; until then it holds one of its "
        "client's `max_inflight_per_client` places, so half-sent bodies cannot hold a replica.",
    )
    min_body_bytes_per_s: int = Field(
        default=256 * 1024, gt=0,
        description="The slowest upload accepted, on average after `body_timeout_s` (a 64 MiB body at 256 KiB/s "
        "takes 256 s).",
    )
    request_timeout_s: float = Field(
        default=120.0, gt=0,
        description="A request still working after this answers 504 SERVICE_TIMEOUT (a /train that times out may "
        "still be applied: retry it with the same Idempotency-Key).",
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="Largest request body accepted, counted as it arrives (chunked uploads too); 413 INPUT_TOO_LARGE "
        "above it. 64 MiB holds the largest legal text request (1024 inputs x 8192 tokens is ~32 MiB of typical text).",
    )


class AppConfig(BaseModel):
    """The whole application: which models, the limits, and one config per component."""

    model_config = ConfigDict(extra="forbid")

    app_name: str = Field(default="classifier", description="Serve application name (for serve.get_app_handle).")
    host: str = Field(default="127.0.0.1", description="HTTP host of `python -m serve_app`.")
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of `python -m serve_app`.")
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1, description="Models to serve.")
    extra_models: list[ModelSpec] = Field(default_factory=list, description="Registry entries added by the operator.")
    aliases: dict[str, str] = Field(default_factory=dict, description="Extra API names -> served model names.")
    limits: Limits = Field(default_factory=Limits, description="Request limits.")
    ingress: IngressConfig = Field(default_factory=IngressConfig, description="The HTTP ingress deployment.")
    embedder: EmbedderConfig = Field(
        default_factory=EmbedderConfig, description="Defaults for every embedder deployment (text and image models)."
    )
    embedder_overrides: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-model changes to `embedder`, keyed by model name."
    )
    state: StateConfig = Field(default_factory=StateConfig, description="Few-shot classifier state.")
    accounts: AccountsConfig = Field(
        default_factory=AccountsConfig, description="API keys, rate limits and the usage ledger (docs/accounts.md)."
    )
    images: ImageFetchConfig = Field(
        default_factory=ImageFetchConfig, description="How image inputs are fetched and decoded (docs/images.md)."
    )

    @model_validator(mode="after")
    def _drain_covers_the_request_timeout(self):
        """Fill unset drain bounds: a replica being replaced keeps the requests it holds until they can no longer
        succeed (the ingress's timeout), instead of Serve's fixed 20 s, which cut long requests off mid-update."""
        drain = self.ingress.request_timeout_s + DRAIN_MARGIN_S
        for component in (self.ingress, self.embedder):
            if component.graceful_shutdown_timeout_s is None:
                component.graceful_shutdown_timeout_s = drain
        return self

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
        merged = _deep_merge(self.embedder.model_dump(), self.embedder_overrides.get(model, {}))
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
