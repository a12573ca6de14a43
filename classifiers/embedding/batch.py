"""The embedding batch step, shared by the embedder deployment and the raw-encoder benchmark.

A batch is a list of requests coalesced by ``@serve.batch``; each request is a list of texts in one role
(input or label). Token limits are checked per request *before* any model call, so one over-long text
fails only its own request and never the others that share the batch.
"""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Encoder, Role
from classifiers.images.config import ImageFetchConfig
from classifiers.images.stream import image_tokens, load_images


@dataclass
class EmbedRequest:
    texts: list[str]
    role: Role = "input"
    max_tokens: int = 8192
    max_total_tokens: int | None = None  # the caller's token budget (its TPM): over it, no model call is made


@dataclass
class EmbedResult:
    vectors: np.ndarray | None
    tokens: list[int] = field(default_factory=list)
    too_long: int | None = None  # index of the first text over max_tokens; vectors is None then
    over_budget: bool = False  # the texts together count more than max_total_tokens; vectors is None then


def embed_batch(encoder: Encoder, requests: list[EmbedRequest]) -> list[EmbedResult]:
    results: list[EmbedResult] = []  # one per request, in order
    accepted: dict[Role, list[int]] = {"input": [], "label": []}
    for i, req in enumerate(requests):
        tokens = encoder.count_tokens(req.texts, req.role)
        over = next((j for j, n in enumerate(tokens) if n > req.max_tokens), None)
        over_budget = req.max_total_tokens is not None and sum(tokens) > req.max_total_tokens
        results.append(EmbedResult(vectors=None, tokens=tokens, too_long=over, over_budget=over_budget))
        if over is None and not over_budget:
            accepted[req.role].append(i)
    for role, idx in accepted.items():
        if not idx:
            continue
        texts = [t for i in idx for t in requests[i].texts]
        vectors = encoder.encode(texts, role)
        start = 0
        for i in idx:
            n = len(requests[i].texts)
            results[i].vectors = vectors[start : start + n]
            start += n
    return results


class ModelTurns:
    """Continuous batching in front of ``@serve.batch``: requests that arrive while earlier ones are at the model
    wait, and are let in together once those are answered, so each batch is everything that arrived during the
    previous model call.

    Why: ``@serve.batch`` closes a batch ``batch_wait_timeout_s`` after its first request and only then queues it
    for the model. Under overload the batches it forms are as small as the arrival rate times the wait, and they
    line up behind the running call instead of merging: measured on 2 cores with 16 one-input clients, 1.6
    requests per batch at a 20 ms wait (docs/benchmarks.md). Held here instead, requests join one batch per
    model call, so batches grow with the backlog, and an idle model starts at once (no wait at low load:
    ``batch_wait_timeout_s`` defaults to 0).

    A group is let in when the last request of the previous group leaves (answered, failed or cancelled), so a
    request that never reaches the model cannot hold the door shut. One instance per replica and model, shared by
    every batched method that calls the model (texts and images of a CLIP replica take turns). One event loop;
    not thread-safe."""

    def __init__(self) -> None:
        self.inside = 0  # requests let in and not yet answered
        self._next_group: asyncio.Event | None = None  # set when `inside` drops to 0; created on the replica's loop

    @contextlib.asynccontextmanager
    async def turn(self):
        if self.inside:
            if self._next_group is None:
                self._next_group = asyncio.Event()
            await self._next_group.wait()
        self.inside += 1
        try:
            yield
        finally:
            self.inside -= 1
            if not self.inside and self._next_group is not None:
                # Everyone waiting now goes in as one group; later arrivals wait for the group after it.
                group, self._next_group = self._next_group, None
                group.set()


class BatchStats:
    """What batching achieved: how many requests and items (texts or images) each model call carried."""

    def __init__(self, item: str = "texts"):
        self.item = item
        self.batches = 0
        self.requests = 0
        self.items = 0
        self.max_requests_in_batch = 0
        self.histogram: dict[int, int] = {}  # requests per batch -> number of batches
        self.model_cpu_s = 0.0

    def add_model_cpu(self, seconds: float) -> None:
        """CPU the process spent during model calls (process time, so the engine's own threads count; the
        replica's other threads meanwhile count too, a small overstatement). The bench splits a replica's CPU
        into model calls and the rest with it (bench/cpu.py)."""
        self.model_cpu_s += seconds

    def record(self, items_per_request: list[int]) -> None:
        n = len(items_per_request)
        self.batches += 1
        self.requests += n
        self.items += sum(items_per_request)
        self.max_requests_in_batch = max(self.max_requests_in_batch, n)
        self.histogram[n] = self.histogram.get(n, 0) + 1

    def snapshot(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            self.item: self.items,
            "max_requests_in_batch": self.max_requests_in_batch,
            "mean_requests_per_batch": self.requests / self.batches if self.batches else 0.0,
            "requests_per_batch_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
            "model_cpu_s": self.model_cpu_s,
        }


# ---- Images (multimodal models): the image side of the same embedding space ----------------------------------


@dataclass
class ImageEmbedRequest:
    """Image inputs of one request: the raw strings (URL / data URI / base64) and their request positions."""

    values: list[str]
    positions: list[int]


@dataclass
class ImageEmbedResult:
    vectors: np.ndarray  # (len(values), dim) float32, rows L2-normalised
    tokens: list[int] = field(default_factory=list)  # per image (classifiers.images.stream.image_tokens)


def embed_image_batch(encoder: Encoder, batch: list[list]) -> list[np.ndarray]:
    """One model pass for several requests' decoded images; returns each request's (n_i, dim) vectors."""
    flat = [im for images in batch for im in images]
    vectors = encoder.encode_images(flat) if flat else np.zeros((0, encoder.dim), np.float32)
    out, start = [], 0
    for images in batch:
        out.append(vectors[start : start + len(images)])
        start += len(images)
    return out


class Embedder(Protocol):
    """How the services reach a model: the Ray embedder deployments (``serve_app.embedders.HandleEmbedder``), or
    :class:`LocalEmbedder` in one process. Both run :func:`embed_batch` / :func:`embed_image_batch`."""

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult: ...

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult: ...


class LocalEmbedder:
    """The in-process Embedder: loaded encoders called directly (one request per model call, off the loop).

    For unit tests, benchmarks and tools that want the service's logic without Ray. ``specs`` and
    ``image_config`` are needed only for image inputs (token rule, safe fetching)."""

    def __init__(
        self, encoders: dict[str, Encoder], *, specs: dict[str, ModelSpec] | None = None,
        image_config: ImageFetchConfig | None = None,
    ):
        self.encoders = encoders
        self.specs = specs or {}
        self.image_config = image_config

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return (await asyncio.to_thread(embed_batch, self.encoders[model], [request]))[0]

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        images = await load_images(request.values, request.positions, self.image_config or ImageFetchConfig())
        (vectors,) = await asyncio.to_thread(embed_image_batch, self.encoders[model], [images])
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(self.specs[model]) for _ in images])
