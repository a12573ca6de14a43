"""The in-process :class:`~classifiers.embedding.requests.Embedder`: loaded encoders called directly, for unit tests,
benchmarks and tools that want the services' logic without Ray."""
from __future__ import annotations

import asyncio

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.batch import count_in_slices, embed_image_batch, embed_now
from classifiers.embedding.engines.base import Encoder
from classifiers.embedding.requests import CountRequest, EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.embedding.tokens import TextCount
from classifiers.images.config import ImageFetchConfig
from classifiers.images.stream import image_tokens, load_images


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
        return await asyncio.to_thread(embed_now, self.encoders[model], request)

    async def count(self, model: str, request: CountRequest) -> TextCount:
        return await count_in_slices(self.encoders[model], request)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        images = await load_images(request.values, request.positions, self.image_config or ImageFetchConfig())
        (vectors,) = await asyncio.to_thread(embed_image_batch, self.encoders[model], [images])
        return ImageEmbedResult(vectors=vectors, tokens=[image_tokens(self.specs[model]) for _ in images])
