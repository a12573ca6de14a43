"""ImageEmbedder: one deployment per served multimodal (CLIP-style) model, serving BOTH towers.

Texts and images of one model go through the same replica and the same loaded encoder, so their vectors
share one space. Texts: ``embed`` has exactly TextEmbedder's contract (``@serve.batch``, token-limit rejection
per request in :func:`classifiers.embedding.batch.embed_batch`). Images: ``embed_images`` fetches and decodes the
request's images concurrently and outside the model's batch loop (:func:`classifiers.images.stream.embed_images`: a
bad image fails only its own request with ``InvalidImage``), downscales each right after decoding to twice the
model's input size, and streams them in chunks to a second ``@serve.batch`` method that coalesces the images of
concurrent requests into model calls. Decoded pixels are budgeted per request and per replica
(``ImageFetchConfig``), so the replica's image memory has a bound (docs/images.md, Memory).
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Callable

import numpy as np
from ray import serve

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.batch import embed_image_batch
from classifiers.embedding.engines import Encoder, load_encoder
from classifiers.embedding.requests import ImageEmbedRequest, ImageEmbedResult
from classifiers.embedding.turns import BatchStats
from classifiers.images.budget import fetch_failure_counts, image_memory_stats
from classifiers.images.config import ImageFetchConfig
from classifiers.images.decode import DEFAULT_SHORT_SIDE
from classifiers.images.stream import embed_images, image_tokens
from deployments.config import EmbedderConfig
from deployments.text_embedder import TextSide

IMAGE_TURN_COST = 256
"""An image's share of a model call in the fair queue, in text tokens: a ViT-B/32 pass over one 224 px image
(50 patches through a 12-layer tower) costs about what a few hundred text tokens do through a text tower of its
size; an estimate, only for sharing the model between tenants."""


def model_input_side(encoder: Encoder) -> int | None:
    """The (shorter) side of the square images the model's vision tower takes, read from the loaded model:
    transformers CLIP and jina-clip configs (``vision_config.image_size``), open_clip (``visual.image_size``).
    None when the model does not say."""
    model = getattr(encoder, "model", None)
    candidates = (
        getattr(getattr(getattr(model, "config", None), "vision_config", None), "image_size", None),
        getattr(getattr(model, "visual", None), "image_size", None),
    )
    for size in candidates:
        if isinstance(size, (tuple, list)) and size and all(isinstance(s, int) for s in size):
            size = min(size)
        if isinstance(size, int) and size > 0:
            return size
    return None


def short_side_for(encoder: Encoder, config: ImageFetchConfig) -> int:
    """Images are kept with their shorter side at most this: the configured ``max_short_side``, else twice the
    model's input size (the model resizes to its input size anyway), else 448."""
    if config.max_short_side is not None:
        return config.max_short_side
    side = model_input_side(encoder)
    return 2 * side if side else DEFAULT_SHORT_SIDE


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
        self.short_side = short_side_for(self.encoder, self.fetch_config)
        self._configure_batching(self._image_batch)
        self._image_stats = BatchStats("images")
        self._failures_exported: Counter = Counter()

    async def embed_images(self, request: ImageEmbedRequest) -> ImageEmbedResult:
        # Network and decoding happen here, per request and concurrently; decoded images reach the batch in chunks.
        try:
            rows = await embed_images(
                request.values, request.positions, self.fetch_config,
                lambda images: self._image_turn(images, request.tenant), short_side=self.short_side,
            )
        finally:
            self._export_fetch_failures()
        if not rows:
            return ImageEmbedResult(vectors=np.zeros((0, self.encoder.dim), np.float32), tokens=[])
        vectors = np.stack(rows).astype(np.float32, copy=False)
        # image_tokens is the same for every image of a model (docs/images.md), so no image is kept for it.
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(self.spec)] * len(rows))

    def _export_fetch_failures(self) -> None:
        for kind, n in fetch_failure_counts().items():
            if n > self._failures_exported[kind]:
                self.metrics.fetch_failed(kind, n - self._failures_exported[kind])
                self._failures_exported[kind] = n

    async def _image_turn(self, images: list, tenant: str) -> np.ndarray:
        async with self.turn(tenant, len(images) * IMAGE_TURN_COST):  # the text tower's turns too: one model
            return await self._image_batch(images)

    @serve.batch  # sizes come from EmbedderConfig (_configure_batching)
    async def _image_batch(self, batch: list[list]) -> list:
        self._image_stats.record([len(images) for images in batch])
        self.metrics.batch("images", len(batch), sum(len(images) for images in batch))
        return await asyncio.to_thread(self._embed_images, batch)

    def _embed_images(self, batch: list[list]) -> list:
        with self._model_lock:
            self.encoder.set_threads(self.threads.large)  # images are compute-bound
            started = time.process_time()
            try:
                return embed_image_batch(self.encoder, batch)
            finally:
                self._image_stats.add_model_cpu(time.process_time() - started)

    # Serve callers await handle.stats.remote() whether a method is sync or async: the override is safe.
    async def stats(self) -> dict:  # type: ignore[override]
        # async: runs on the replica's event loop, where the image pixel budgets live.
        return {
            **super().stats(), "image_batches": self._image_stats.snapshot(), "image_memory": image_memory_stats(),
            "image_fetch_failures": fetch_failure_counts(),
        }
