"""What crosses between the services and the embedders: the request and result types and the :class:`Embedder`
protocol (the Ray deployments' handles, ``serve_app.embedders.HandleEmbedder``, or :class:`~classifiers.embedding.local.LocalEmbedder`
in one process). Plain dataclasses and numpy arrays: they pickle cheaply across a handle."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from classifiers.embedding.engines.base import Role
from classifiers.embedding.tokens import TextCount


@dataclass
class EmbedRequest:
    """Texts of one request (or one chunk of it) in one role. ``tenant`` and ``cost`` (its tokens, counted by the
    ingress before admission) are what the embedder's fair queue (``classifiers.embedding.turns.FairTurns``) shares
    the model by. With ``counts`` (and ``ids``) from the ingress the replica does not tokenise again."""

    texts: list[str]
    role: Role = "input"
    max_tokens: int = 8192
    tenant: str = ""
    cost: int = 0
    counts: list[int] | None = None  # tokens per text, as the ingress counted them (the replica trusts them)
    ids: list[list[int]] | None = None  # content ids, where the ingress's tokenizer is the engine's (hf, clip)


@dataclass
class EmbedResult:
    vectors: np.ndarray | None
    tokens: list[int] = field(default_factory=list)
    too_long: int | None = None  # index of the first text over max_tokens; vectors is None then


@dataclass
class CountRequest:
    """Texts to count in the model's replica, for an engine whose tokenizer the ingress cannot load: counting
    stops at the first text over ``max_tokens`` or once the total passes ``stop_at``."""

    texts: list[str]
    role: Role = "input"
    max_tokens: int = 8192
    stop_at: int | None = None


@dataclass
class ImageEmbedRequest:
    """Image inputs of one request: the raw strings (URL / data URI / base64) and their request positions."""

    values: list[str]
    positions: list[int]
    tenant: str = ""  # whose work this is in the embedder's fair queue


@dataclass
class ImageEmbedResult:
    vectors: np.ndarray  # (len(values), dim) float32, rows L2-normalised
    tokens: list[int] = field(default_factory=list)  # per image (classifiers.images.stream.image_tokens)


class Embedder(Protocol):
    """How the services reach a model: the Ray embedder deployments (``serve_app.embedders.HandleEmbedder``), or
    :class:`~classifiers.embedding.local.LocalEmbedder` in one process. Both run the batch step of
    ``classifiers/embedding/batch.py``, and count
    with the engine for models the ingress has no tokenizer of (``classifiers.embedding.batch.count_in_slices``)."""

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult: ...

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult: ...

    async def count(self, model: str, request: CountRequest) -> TextCount: ...


