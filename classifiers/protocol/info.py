"""The answers of the informational routes as pydantic models: the served models, health, readiness, statistics.

Typed for the same reason as the wire format (``classifiers/protocol/wire.py``): ``/openapi.json`` then documents
every route's answer, the reliability suite's schema fuzzer checks real answers against it, and the client parses
them into these classes. ``ModelCard`` and ``ModelList`` are Jina's ``ModelInfo`` and ``ModelListResponse``
(``/v1/models``) plus our fields (``alias_of``, ``served_by``, ``score_scale``, ...). ``ServiceStats`` is typed at the
top level; each component's counters stay a free-form mapping, because they are that component's own (an embedder's
batching counters differ by engine) and only read by people and dashboards. Every field is always sent, so the
published schema marks fields with a default required too (``Answer``): a client may rely on them as on Jina's.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Answer(BaseModel):
    """Base of these answers: in ``/openapi.json`` a field with a default is still required (it is always sent)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)


class ServedBy(Answer):
    """What really runs a model name (ours)."""

    backend: str = Field(description="The engine, e.g. `torch_e5`, `torch_bert`, `hf`, `open_clip`.")
    source: str = Field(description="Where its weights come from (`package:<name>`, a directory or a Hub id).")
    window_tokens: int = Field(description="The model's own window; longer inputs are embedded window by window.")


class ModelPricing(Answer):
    """Jina's pricing block; everything is free here, so every price is "0"."""

    prompt: str = "0"
    completion: str = "0"
    image: str = "0"
    request: str = "0"
    input_cache_read: str = "0"
    input_cache_write: str = "0"


class ModelDatacenter(Answer):
    """Jina's datacenter entry (none here: the service runs where you deploy it)."""

    country_code: str


class ModelCard(Answer):
    """One API model name (aliases included): Jina's ``ModelInfo`` plus our fields, every field always sent."""

    id: str = Field(description="The name clients send in `model`.")
    object: Literal["model"] = "model"
    name: str
    alias_of: str | None = Field(description="Ours: the served model this name is an alias of, else null.")
    hugging_face_id: str = Field(description="The Hub id of the weights; empty when they ship inside a package.")
    served_by: ServedBy = Field(description="Ours: the engine and weights behind the name.")
    description: str
    input_modalities: list[str] = Field(description="`text`, and `image` for multimodal models.")
    output_modalities: list[str]
    context_length: int = Field(description="The longest input accepted, in tokens (the service's limit).")
    max_output_length: int | None = Field(description="The embedding dimension (null if unknown before loading).")
    score_scale: float = Field(description="Ours: zero-shot scores are softmax(score_scale x cosine similarity).")
    multi_label_threshold: float | None = Field(
        description="Ours: the share a label must reach in zero-shot multi-label when the request gives none."
    )
    quantization: str = Field(description="The engine's weight quantization (`q4`), empty for float weights.")
    created: int
    pricing: ModelPricing
    supported_features: list[str]
    matryoshka: bool = Field(description="Ours: whether `dimensions` may truncate its embeddings.")
    supported_sampling_parameters: list[str]
    datacenters: list[ModelDatacenter]


class ModelList(Answer):
    """``GET /v1/models``: every served name (aliases included), as Jina's ``ModelListResponse``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(Answer):
    """``/health`` and ``/live``: the ingress process answers."""

    status: Literal["ok"] = "ok"


class Readiness(Answer):
    """``/ready`` when every served model is loaded and answering (else a 503 error body)."""

    status: Literal["ready"] = "ready"
    models: list[str] = Field(description="The served models, each answering.")


class IngressStats(Answer):
    """The answering ingress replica itself."""

    inflight: int = Field(description="Requests admitted and not yet answered.")
    rss_bytes: int
    peak_rss_bytes: int
    pid: int


class EmbedCalls(Answer):
    """Small requests to the embedders and the handle calls that carried them (the coalescing ratio)."""

    requests: int
    calls: int


class ServiceStats(Answer):
    """``GET /v1/stats`` (ours, admin): batching, cache and rate-limit statistics of the replica that answers."""

    embedders: dict[str, dict[str, Any]] = Field(description="Per served model: its embedder's own counters.")
    label_cache: dict[str, Any] = Field(description="The zero-shot label-vector cache: size, bytes, hits, misses.")
    classifier_shards: list[dict[str, Any]] = Field(description="Per few-shot state shard: its memory and table.")
    rate_limit_refusals: dict[str, int] = Field(description="Refusals per limit code.")
    shed: dict[str, int] = Field(description="Requests shed at admission, per reason.")
    ingress: IngressStats
    embed_calls: EmbedCalls
    usage_flush_failures: int = Field(description="Failed sends of pending usage to the ledger (retried).")
