"""The embedding batch step, shared by the embedder deployment and the raw-encoder benchmark.

A batch is a list of requests coalesced by ``@serve.batch``; each request is a list of texts in one role
(input or label). Token limits are checked per request *before* any model call, so one over-long text
fails only its own request and never the others that share the batch.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Encoder, Role
from classifiers.embedding.tokens import TextCount, count_slice, slice_spans
from classifiers.images.config import ImageFetchConfig
from classifiers.images.stream import image_tokens, load_images


@dataclass
class EmbedRequest:
    """Texts of one request (or one chunk of it) in one role. ``tenant`` and ``cost`` (its tokens, counted by the
    ingress before admission) are what the embedder's fair queue (:class:`FairTurns`) shares the model by."""

    texts: list[str]
    role: Role = "input"
    max_tokens: int = 8192
    tenant: str = ""
    cost: int = 0


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


def embed_batch(encoder: Encoder, requests: list[EmbedRequest]) -> list[EmbedResult]:
    """One model call for the requests of a batch. Each request's texts are counted first (the ingress counted and
    admitted them already; this is the replica's own guard), so a text over its limit fails only its request."""
    results: list[EmbedResult] = []  # one per request, in order
    accepted: dict[Role, list[int]] = {"input": [], "label": []}
    for i, req in enumerate(requests):
        tokens = encoder.count_tokens(req.texts, req.role)
        over = next((j for j, n in enumerate(tokens) if n > req.max_tokens), None)
        results.append(EmbedResult(vectors=None, tokens=tokens, too_long=over))
        if over is None:
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


@dataclass
class _Waiter:
    tenant: str
    cost: int
    start: float  # its start tag: the virtual time at which it may be served (start-time fair queueing)
    seq: int
    let_in: asyncio.Future


class FairTurns:
    """Continuous batching in front of ``@serve.batch``, shared fairly between tenants and bounded in tokens.

    Requests that arrive while earlier ones are at the model wait; once those are answered, the next group is let
    in together (so each batch is what waited during the previous model call, and an idle model starts at once).

    Why not let in everyone who waited: a tenant's big request (its ingress chunks of up to
    ``classifiers.embedding.vectors.CHUNK_TOKENS`` tokens, two at a time) would join every batch, and another
    tenant's one-input request would wait behind all of it. Instead each group holds at most ``max_tokens`` tokens
    (one long text over it still goes, alone) and ``max_requests`` requests, chosen by start-time fair queueing over
    tokens: a request's start tag is the later of the current virtual time and its tenant's previous finish tag, so
    a tenant that has just been served a lot waits behind tenants that have not. A one-input request therefore
    waits at most for the model call running when it arrived, then goes in the next group, never behind a large
    batch that formed after it arrived.

    A group is let in when the last request of the previous group leaves (answered, failed or cancelled), so a
    request that never reaches the model cannot hold the door shut. One instance per replica and model, shared by
    every batched method that calls the model (texts and images of a CLIP replica take turns). One event loop;
    not thread-safe."""

    def __init__(self, max_tokens: int, max_requests: int) -> None:
        self.max_tokens = max(1, max_tokens)
        self.max_requests = max(1, max_requests)
        self.inside = 0  # requests let in and not yet answered
        self._waiting: list[_Waiter] = []
        self._finish: dict[str, float] = {}  # tenant -> finish tag of its last request (pruned once passed)
        self._vtime = 0.0
        self._seq = 0

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str = "", cost: int = 1):
        waiter = self._enqueue(tenant, max(1, cost))
        if self.inside or len(self._waiting) > 1:
            try:
                await waiter.let_in
            except asyncio.CancelledError:
                if waiter.let_in.done() and not waiter.let_in.cancelled():
                    self._leave()  # let in, then cancelled before it ran: its place in the group is freed
                else:
                    self._waiting.remove(waiter)
                raise
        else:
            self._waiting.remove(waiter)
            self._vtime = max(self._vtime, waiter.start)
            self.inside += 1
        try:
            yield
        finally:
            self._leave()

    def _enqueue(self, tenant: str, cost: int) -> _Waiter:
        start = max(self._vtime, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + cost
        self._seq += 1
        waiter = _Waiter(tenant, cost, start, self._seq, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        return waiter

    def _leave(self) -> None:
        self.inside -= 1
        if not self.inside and self._waiting:
            self._let_in_next_group()

    def _let_in_next_group(self) -> None:
        order = sorted(self._waiting, key=lambda w: (w.start, w.seq))
        group: list[_Waiter] = []
        tokens = 0
        for w in order:
            if group and (len(group) >= self.max_requests or tokens + w.cost > self.max_tokens):
                break
            group.append(w)
            tokens += w.cost
        self._vtime = max(self._vtime, group[-1].start)
        chosen = {id(w) for w in group}
        self._waiting = [w for w in self._waiting if id(w) not in chosen]
        self.inside += len(group)
        for w in group:
            w.let_in.set_result(None)
        # Finish tags at or below the virtual time say nothing any more (a tenant's next start is the virtual time).
        if len(self._finish) > 4 * (len(self._waiting) + self.inside) + 64:
            waiting = {w.tenant for w in self._waiting}
            self._finish = {t: f for t, f in self._finish.items() if f > self._vtime or t in waiting}

    @property
    def waiting(self) -> int:
        return len(self._waiting)


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
    tenant: str = ""  # whose work this is in the embedder's fair queue


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
    :class:`LocalEmbedder` in one process. Both run :func:`embed_batch` / :func:`embed_image_batch`, and count
    with the engine for models the ingress has no tokenizer of (:func:`count_in_slices`)."""

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult: ...

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult: ...

    async def count(self, model: str, request: CountRequest) -> TextCount: ...


async def count_in_slices(encoder: Encoder, request: CountRequest, lock: threading.Lock | None = None) -> TextCount:
    """Count with the engine's own tokenizer, slice by slice off the event loop, each slice under ``lock`` (the
    model's: an engine's tokenizer is not safe to share with a model call running meanwhile), so model calls of
    other requests go on between slices."""
    done = TextCount()

    def one(part: list[str]) -> None:
        with lock if lock is not None else contextlib.nullcontext():
            count_slice(lambda t: encoder.count_tokens(t, request.role), part, done, stop_at=request.stop_at,
                        max_tokens=request.max_tokens)

    for lo, hi in slice_spans(request.texts):
        await asyncio.to_thread(one, request.texts[lo:hi])
        if not done.complete:
            break
    return done


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

    async def count(self, model: str, request: CountRequest) -> TextCount:
        return await count_in_slices(self.encoders[model], request)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        images = await load_images(request.values, request.positions, self.image_config or ImageFetchConfig())
        (vectors,) = await asyncio.to_thread(embed_image_batch, self.encoders[model], [images])
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(self.specs[model]) for _ in images])
