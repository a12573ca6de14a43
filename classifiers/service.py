"""The classification service core: parse, check, embed (through an injected callable), score.

The core knows nothing about Ray: the router deployment injects ``embed`` (a DeploymentHandle call),
tests and benchmarks can inject an in-process encoder. Every client-fixable problem raises a typed
:mod:`classifiers.errors` error before or instead of any model work.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Awaitable, Callable

import numpy as np

from classifiers.api import ClassificationResponse, ClassifyRequest, Usage
from classifiers.embedding import EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.errors import InputTooLong, InvalidInput
from classifiers.fewshot_service import Classifiers, FewShotMixin
from classifiers.inputs import Item, check_modalities, parse_inputs
from classifiers.limits import Limits
from classifiers.registry import ModelSpec, Registry
from classifiers.zeroshot import parse_labels, predictions

EmbedFn = Callable[[str, EmbedRequest], Awaitable[EmbedResult]]
ImageEmbedFn = Callable[[str, ImageEmbedRequest], Awaitable[ImageEmbedResult]]


class LabelCache:
    """LRU of label embeddings keyed by (model, label text as embedded): repeated label sets cost no model call."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._data: OrderedDict[tuple[str, str], tuple[np.ndarray, int]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[str, str]) -> tuple[np.ndarray, int] | None:
        hit = self._data.get(key)
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        self._data.move_to_end(key)
        return hit

    def put(self, key: tuple[str, str], value: tuple[np.ndarray, int]) -> None:
        if self.capacity <= 0:
            return
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def stats(self) -> dict:
        return {"size": len(self._data), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}


class ClassificationService(FewShotMixin):
    def __init__(
        self, *, registry: Registry, limits: Limits, embed: EmbedFn, label_cache_size: int = 20000,
        classifiers: Classifiers | None = None, embed_images: ImageEmbedFn | None = None,
    ):
        self.registry = registry
        self.limits = limits
        self._embed = embed
        self._embed_images = embed_images
        self.label_cache = LabelCache(label_cache_size)
        self.classifiers = classifiers

    async def classify(self, req: ClassifyRequest, caller: str = "anonymous") -> ClassificationResponse:
        if req.classifier_id is not None:
            return await self.classify_fewshot(req, caller)
        if req.model is None:
            raise InvalidInput("zero-shot classification needs `model` and `labels`")
        spec = self.registry.get(req.model)
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        check_modalities(items, spec, self.registry.with_image_support())
        label_set = parse_labels(req.labels, self.limits)
        (vectors, input_tokens), (label_vectors, label_tokens) = await asyncio.gather(
            self.embed_items(spec, items), self.label_vectors(spec, label_set.unique())
        )
        data = predictions(vectors, label_set, label_vectors, spec.score_scale)
        return ClassificationResponse(data=data, usage=Usage(total_tokens=input_tokens + label_tokens))

    async def embed_items(self, spec: ModelSpec, items: list[Item]) -> tuple[np.ndarray, int]:
        """Embed checked input items in request order; returns (N, D) vectors and the total tokens used.

        Texts and images of one request go to the model's embedder concurrently (images: fetched and decoded
        there, outside the model's batch loop); errors name the item's position in the request."""
        texts = [i for i, it in enumerate(items) if it.kind == "text"]
        images = [i for i, it in enumerate(items) if it.kind == "image"]
        jobs = []
        if texts:
            jobs.append(self._embed_texts(spec, [items[i].value for i in texts], texts))
        if images:
            jobs.append(self._embed_image_items(spec, [items[i].value for i in images], images))
        parts = await asyncio.gather(*jobs)
        out: np.ndarray | None = None
        tokens = 0
        for positions, (vectors, n) in zip([p for p in (texts, images) if p], parts):
            if out is None:
                out = np.empty((len(items), vectors.shape[1]), np.float32)
            out[positions] = vectors
            tokens += n
        return out, tokens

    async def _embed_texts(self, spec: ModelSpec, texts: list[str], positions: list[int]) -> tuple[np.ndarray, int]:
        result = await self._embed(spec.name, EmbedRequest(texts, "input", self.limits.max_input_tokens))
        if result.too_long is not None:
            i = result.too_long
            raise InputTooLong(
                f"input[{positions[i]}] has {result.tokens[i]} tokens; the limit is {self.limits.max_input_tokens} per input"
            )
        return result.vectors, int(sum(result.tokens))

    async def _embed_image_items(self, spec: ModelSpec, values: list[str], positions: list[int]) -> tuple[np.ndarray, int]:
        if self._embed_images is None:
            raise InvalidInput("image inputs are not enabled in this deployment")
        result = await self._embed_images(spec.name, ImageEmbedRequest(values, positions))
        return result.vectors, int(sum(result.tokens))

    async def label_vectors(self, spec: ModelSpec, labels: list[str]) -> tuple[dict[str, np.ndarray], int]:
        texts = {lab: spec.label_template.replace("{label}", lab) for lab in labels}
        found: dict[str, tuple[np.ndarray, int]] = {}
        missing = []
        for lab in labels:
            hit = self.label_cache.get((spec.name, texts[lab]))
            if hit is None:
                missing.append(lab)
            else:
                found[lab] = hit
        if missing:
            result = await self._embed(
                spec.name, EmbedRequest([texts[lab] for lab in missing], "label", self.limits.max_input_tokens)
            )
            if result.too_long is not None:
                lab = missing[result.too_long]
                raise InputTooLong(
                    f"label {lab[:40]!r} has {result.tokens[result.too_long]} tokens; "
                    f"the limit is {self.limits.max_input_tokens}"
                )
            for lab, vec, n in zip(missing, result.vectors, result.tokens):
                vec = np.array(vec, copy=True)  # own the row: a view would pin the whole Ray result buffer
                found[lab] = (vec, n)
                self.label_cache.put((spec.name, texts[lab]), (vec, n))
        return {lab: v for lab, (v, _) in found.items()}, sum(n for _, n in found.values())
