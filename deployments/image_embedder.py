"""ImageEmbedder: one deployment per served multimodal (CLIP-style) model, serving BOTH towers.

Texts and images of one model go through the same replica and the same loaded encoder, so their vectors
share one space. Texts: ``embed`` has exactly TextEmbedder's contract (``@serve.batch``, token-limit rejection
per request in :func:`classifiers.embedding.embed_batch`). Images: ``embed_images`` fetches and decodes the
request's images first, concurrently and outside the model's batch loop (bounded per replica by
``ImageFetchConfig.max_concurrency``; a bad image fails only its own request with ``InvalidImage``), then the
decoded images of concurrent requests are coalesced by a second ``@serve.batch`` method into model calls.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Callable

import numpy as np
from ray import serve

from classifiers.embedding import (
    BatchStats,
    EmbedRequest,
    EmbedResult,
    ImageEmbedRequest,
    ImageEmbedResult,
    embed_batch,
    embed_image_batch,
)
from classifiers.engines import Encoder, load_encoder
from classifiers.images import ImageFetchConfig, image_tokens, load_images
from classifiers.registry import ModelSpec

logger = logging.getLogger("ray.serve")


@serve.deployment(name="ImageEmbedder")
class ImageEmbedder:
    def __init__(
        self,
        spec: dict,
        config: dict,
        images: dict | None = None,
        *,
        encoder_loader: Callable[..., Encoder] = load_encoder,
    ):
        from serve_app.config import EmbedderConfig

        self.spec = ModelSpec(**spec)
        if "image" not in self.spec.modalities:
            raise ValueError(f"ImageEmbedder serves multimodal models; {self.spec.name!r} embeds only text")
        self.config = EmbedderConfig(**config)
        self.fetch_config = ImageFetchConfig(**(images or {}))
        started = time.perf_counter()
        # Ray sets OMP_NUM_THREADS=1 in replicas with fractional num_cpus; engines would crawl on one thread.
        threads = self.config.num_threads or os.cpu_count() or 1
        self.encoder = encoder_loader(self.spec, num_threads=threads, device=self.config.device)
        logger.info(
            "ImageEmbedder %s loaded in %.1fs (dim=%d) with config %s, image fetching %s",
            self.spec.name, time.perf_counter() - started, self.encoder.dim, self.config.model_dump_json(),
            self.fetch_config.model_dump_json(),
        )
        for method in (self._batch, self._image_batch):
            method.set_max_batch_size(self.config.max_batch_size)
            method.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self._stats = BatchStats("texts")
        self._image_stats = BatchStats("images")

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        return await self._batch(request)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _batch(self, requests: list[EmbedRequest]) -> list[EmbedResult]:
        self._stats.record([len(r.texts) for r in requests])
        return await asyncio.to_thread(embed_batch, self.encoder, requests)

    async def embed_images(self, request: ImageEmbedRequest) -> ImageEmbedResult:
        # Network and decoding happen here, per request and concurrently; only decoded images enter the batch.
        images = await load_images(request.values, request.positions, self.fetch_config)
        if not images:
            return ImageEmbedResult(vectors=np.zeros((0, self.encoder.dim), np.float32), tokens=[])
        vectors = await self._image_batch(images)
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(im, self.spec) for im in images])

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _image_batch(self, batch: list[list]) -> list:
        self._image_stats.record([len(images) for images in batch])
        return await asyncio.to_thread(embed_image_batch, self.encoder, batch)

    def stats(self) -> dict:
        return {"model": self.spec.name, **self._stats.snapshot(), "image_batches": self._image_stats.snapshot()}

    def ready(self) -> bool:
        return True  # a replica answers only once __init__ (the model load) has finished
