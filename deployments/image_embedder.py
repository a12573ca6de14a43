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
from typing import Callable

import numpy as np
from ray import serve

from classifiers.embedding import BatchStats, ImageEmbedRequest, ImageEmbedResult, embed_image_batch
from classifiers.engines import Encoder, load_encoder
from classifiers.images import ImageFetchConfig, image_tokens, load_images
from classifiers.registry import ModelSpec
from deployments.config import EmbedderConfig
from deployments.text_embedder import TextSide


@serve.deployment(name="ImageEmbedder")
class ImageEmbedder(TextSide):
    def __init__(
        self, spec: ModelSpec, config: EmbedderConfig, images: ImageFetchConfig | None = None, *,
        encoder_loader: Callable[..., Encoder] = load_encoder,
    ):
        if "image" not in spec.modalities:
            raise ValueError(f"ImageEmbedder serves multimodal models; {spec.name!r} embeds only text")
        self.fetch_config = images or ImageFetchConfig()
        super().__init__(spec, config, encoder_loader=encoder_loader)
        self._configure_batching(self._image_batch)
        self._image_stats = BatchStats("images")

    async def embed_images(self, request: ImageEmbedRequest) -> ImageEmbedResult:
        # Network and decoding happen here, per request and concurrently; only decoded images enter the batch.
        images = await load_images(request.values, request.positions, self.fetch_config)
        if not images:
            return ImageEmbedResult(vectors=np.zeros((0, self.encoder.dim), np.float32), tokens=[])
        vectors = await self._image_batch(images)
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(im, self.spec) for im in images])

    @serve.batch  # sizes come from EmbedderConfig (_configure_batching)
    async def _image_batch(self, batch: list[list]) -> list:
        self._image_stats.record([len(images) for images in batch])
        return await asyncio.to_thread(embed_image_batch, self.encoder, batch)

    def stats(self) -> dict:
        return {**super().stats(), "image_batches": self._image_stats.snapshot()}
