"""Checked request items and labels -> vectors and token counts, through an :class:`Embedder`.

Both services (zero-shot and few-shot) need the same two things: a request's inputs embedded in request order
(texts and images of one request concurrently, errors naming each item's position) and label names embedded
in the model's label template, cached. This module is that one piece; the embedder behind it is the Ray
deployments' handles in the service (``deployments/embedder_handles.py``) or an in-process encoder
(:class:`classifiers.embedding.LocalEmbedder`) in tests, benchmarks and tools.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict

import numpy as np

from classifiers.embedding import Embedder, EmbedRequest, ImageEmbedRequest
from classifiers.errors import TOKEN_LIMIT, InputTooLong, RateLimited
from classifiers.inputs import Item
from classifiers.limits import Limits
from classifiers.registry import ModelSpec, pool_label_vectors


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


class Vectors:
    """Embeds inputs and labels for the services; owns the label cache."""

    def __init__(self, embedder: Embedder, limits: Limits, label_cache: LabelCache):
        self.embedder = embedder
        self.limits = limits
        self.label_cache = label_cache

    async def inputs(self, spec: ModelSpec, items: list[Item], *, max_total_tokens: int | None = None) -> tuple[np.ndarray, int]:
        """Embed checked input items in request order; returns (N, D) vectors and the total tokens used.

        ``max_total_tokens`` is the caller's token budget (its tokens-per-minute limit): texts over it in total
        are refused by the embedder after tokenising, before any model work (RateLimited, TOKEN_LIMIT).

        Texts and images of one request go to the model's embedder concurrently (images: fetched and decoded
        there, outside the model's batch loop); errors name the item's position in the request."""
        texts = [i for i, it in enumerate(items) if it.kind == "text"]
        images = [i for i, it in enumerate(items) if it.kind == "image"]
        jobs, parts_at = [], []
        if texts:
            jobs.append(self._texts(spec, [items[i].value for i in texts], texts, max_total_tokens))
            parts_at.append(texts)
        if images:
            jobs.append(self._images(spec, [items[i].value for i in images], images))
            parts_at.append(images)
        parts = await asyncio.gather(*jobs)
        out = np.empty((len(items), parts[0][0].shape[1]), np.float32)
        tokens = 0
        for positions, (vectors, n) in zip(parts_at, parts):
            out[positions] = vectors
            tokens += n
        return out, tokens

    async def _texts(
        self, spec: ModelSpec, texts: list[str], positions: list[int], max_total_tokens: int | None
    ) -> tuple[np.ndarray, int]:
        result = await self.embedder.embed(
            spec.name, EmbedRequest(texts, "input", self.limits.max_input_tokens, max_total_tokens=max_total_tokens)
        )
        if result.over_budget:
            raise over_token_budget(int(sum(result.tokens)), max_total_tokens)
        if result.too_long is not None:
            i = result.too_long
            raise InputTooLong(
                f"input[{positions[i]}] has {result.tokens[i]} tokens; the limit is {self.limits.max_input_tokens} per input"
            )
        return result.vectors, int(sum(result.tokens))

    async def _images(self, spec: ModelSpec, values: list[str], positions: list[int]) -> tuple[np.ndarray, int]:
        result = await self.embedder.embed_images(spec.name, ImageEmbedRequest(values, positions))
        return result.vectors, int(sum(result.tokens))

    async def labels(self, spec: ModelSpec, labels: list[str]) -> tuple[dict[str, np.ndarray], int]:
        """Each label's vector by the model's label recipe (its embeddings in the registry's label templates,
        averaged: ``ModelSpec.label_texts`` / ``pool_label_vectors``) and the tokens the labels count: each
        label counts the tokens of its first template text, however many templates the model averages."""
        texts = {lab: spec.label_texts(lab) for lab in labels}
        wanted = list(dict.fromkeys(t for lab in labels for t in texts[lab]))
        found: dict[str, tuple[np.ndarray, int]] = {}
        missing = []
        for text in wanted:
            hit = self.label_cache.get((spec.name, text))
            if hit is None:
                missing.append(text)
            else:
                found[text] = hit
        if missing:
            result = await self.embedder.embed(spec.name, EmbedRequest(missing, "label", self.limits.max_input_tokens))
            if result.too_long is not None:
                raise InputTooLong(
                    f"label {missing[result.too_long][:40]!r} has {result.tokens[result.too_long]} tokens; "
                    f"the limit is {self.limits.max_input_tokens}"
                )
            for text, vec, n in zip(missing, result.vectors, result.tokens):
                vec = np.array(vec, copy=True)  # own the row: a view would pin the whole Ray result buffer
                found[text] = (vec, n)
                self.label_cache.put((spec.name, text), (vec, n))
        vectors = {lab: pool_label_vectors([found[t][0] for t in texts[lab]]) for lab in labels}
        return vectors, sum(found[texts[lab][0]][1] for lab in labels)


def over_token_budget(tokens: int, budget: int | None) -> RateLimited:
    """A request that alone counts more tokens than its tokens-per-minute limit: it can never be admitted."""
    return RateLimited(
        f"This request counts {tokens} tokens, over your limit of {budget} tokens per minute: split it into "
        "smaller requests.", code=TOKEN_LIMIT, retry_after_s=60.0,
    )
