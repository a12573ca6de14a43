"""Checked request items and labels -> vectors and token counts, through an :class:`Embedder`.

Both services (zero-shot and few-shot) need the same two things: a request's inputs embedded in request order
(texts and images of one request concurrently, errors naming each item's position) and label names embedded
in the model's label template, cached. This module is that one piece; the embedder behind it is the Ray
deployments' handles in the service (``serve_app.embedders.HandleEmbedder``) or an in-process encoder
(:class:`classifiers.embedding.batch.LocalEmbedder`) in tests, benchmarks and tools.
"""
from __future__ import annotations

import asyncio
import sys
from collections import OrderedDict
from typing import Awaitable, Callable, TypeVar

import numpy as np

from classifiers.catalog.registry import ModelSpec, pool_label_vectors
from classifiers.embedding.batch import Embedder, EmbedRequest, ImageEmbedRequest
from classifiers.protocol.errors import TOKEN_LIMIT, InputTooLong, RateLimited
from classifiers.request.inputs import Item
from classifiers.request.limits import Limits

ENTRY_OVERHEAD_BYTES = 320  # per cached label beyond its vector and strings: key/value tuples, array header, LRU node
DEFAULT_LABEL_CACHE_BYTES = 64 * 1024 * 1024


def entry_bytes(key: tuple[str, str], value: tuple[np.ndarray, int]) -> int:
    """What one cached label costs in memory, counted conservatively (the model name as if not shared)."""
    vector = value[0]
    return (
        int(getattr(vector, "nbytes", 0)) + sys.getsizeof(key[0]) + sys.getsizeof(key[1]) + ENTRY_OVERHEAD_BYTES
    )


T = TypeVar("T")
CHUNK_TEXTS = 32  # texts per embedder call: a full batch of one-input requests costs about the same
CHUNK_CHARS = 64 * 1024  # and at most this much text (long inputs are chunk-pooled windows: bound the call's work)
CHUNK_IMAGES = 16  # images per embedder call (each is fetched, decoded and encoded there)
CHUNKS_IN_FLIGHT = 2  # chunks of one request queued at the embedder at once: one computing, one waiting


def chunk_spans(texts: list[str]) -> list[tuple[int, int]]:
    """[lo, hi) index ranges: at most CHUNK_TEXTS texts and (unless one text alone is longer) CHUNK_CHARS each."""
    spans, lo, chars = [], 0, 0
    for i, t in enumerate(texts):
        if i > lo and (i - lo >= CHUNK_TEXTS or chars + len(t) > CHUNK_CHARS):
            spans.append((lo, i))
            lo, chars = i, 0
        chars += len(t)
    spans.append((lo, len(texts)))
    return spans


async def in_chunks(spans: list[tuple[int, int]], call: Callable[[int, int], Awaitable[T]]) -> list[T]:
    """``call(lo, hi)`` for each span, at most CHUNKS_IN_FLIGHT at a time, results in span order; the first failure
    cancels the chunks not yet done (they are not worth their model time)."""
    if len(spans) == 1:
        return [await call(*spans[0])]
    gate = asyncio.Semaphore(CHUNKS_IN_FLIGHT)

    async def one(lo: int, hi: int) -> T:
        async with gate:
            return await call(lo, hi)

    tasks = [asyncio.ensure_future(one(lo, hi)) for lo, hi in spans]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        for t in tasks:
            t.cancel()


class LabelCache:
    """LRU of label vectors keyed by (model, label), pooled over the model's templates: repeated labels cost no model call.

    Bounded in entries (``capacity``) and in bytes (``max_bytes``): entries alone do not bound memory, since label
    texts are client strings (up to ``Limits.max_label_chars`` each) and vectors of large models are 4 KB and more.
    The least recently used entries go first; an entry larger than ``max_bytes`` on its own is not cached."""

    def __init__(self, capacity: int, max_bytes: int = DEFAULT_LABEL_CACHE_BYTES):
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.bytes = 0
        self._data: OrderedDict[tuple[str, str], tuple[np.ndarray, int]] = OrderedDict()
        self._sizes: dict[tuple[str, str], int] = {}
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
        size = entry_bytes(key, value)
        if size > self.max_bytes:
            return
        if key in self._data:
            self.bytes -= self._sizes[key]
        self._data[key] = value
        self._sizes[key] = size
        self.bytes += size
        self._data.move_to_end(key)
        while len(self._data) > self.capacity or self.bytes > self.max_bytes:
            old, _ = self._data.popitem(last=False)
            self.bytes -= self._sizes.pop(old)

    def stats(self) -> dict:
        return {
            "size": len(self._data), "capacity": self.capacity, "bytes": self.bytes, "max_bytes": self.max_bytes,
            "hits": self.hits, "misses": self.misses,
        }


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
        parts = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)  # one kind: no task for a gather
        out = np.empty((len(items), parts[0][0].shape[1]), np.float32)
        tokens = 0
        for positions, (vectors, n) in zip(parts_at, parts, strict=True):
            out[positions] = vectors
            tokens += n
        return out, tokens

    async def _texts(
        self, spec: ModelSpec, texts: list[str], positions: list[int], max_total_tokens: int | None
    ) -> tuple[np.ndarray, int]:
        """Embed in chunks of at most CHUNK_TEXTS texts / CHUNK_CHARS characters (:func:`in_chunks`).

        Why: ``@serve.batch`` coalesces *requests*, so one 1024-input request would be one giant model call that
        every short request batched with it waits for. Chunks enter the embedder's queue a few at a time and
        other clients' requests batch in between; a big request costs the others at most a chunk's time."""
        used = 0

        async def one(lo: int, hi: int) -> np.ndarray:
            nonlocal used
            budget = None if max_total_tokens is None else max_total_tokens - used
            result = await self.embedder.embed(
                spec.name, EmbedRequest(texts[lo:hi], "input", self.limits.max_input_tokens, max_total_tokens=budget)
            )
            used += int(sum(result.tokens))
            if result.over_budget or (max_total_tokens is not None and used > max_total_tokens):
                raise over_token_budget(used, max_total_tokens)
            if result.too_long is not None:
                i = result.too_long
                raise InputTooLong(
                    f"input[{positions[lo + i]}] has {result.tokens[i]} tokens; the limit is "
                    f"{self.limits.max_input_tokens} per input"
                )
            assert result.vectors is not None  # embedded: neither too long nor over the budget
            return result.vectors

        vectors = await in_chunks(chunk_spans(texts), one)
        return (vectors[0] if len(vectors) == 1 else np.concatenate(vectors)), used

    async def _images(self, spec: ModelSpec, values: list[str], positions: list[int]) -> tuple[np.ndarray, int]:
        """Images in chunks of CHUNK_IMAGES (:func:`in_chunks`): one request's images never hold the embedder's
        fetchers and batches for long (see ``_texts``)."""
        spans = [(lo, min(lo + CHUNK_IMAGES, len(values))) for lo in range(0, len(values), CHUNK_IMAGES)]
        results = await in_chunks(
            spans, lambda lo, hi: self.embedder.embed_images(spec.name, ImageEmbedRequest(values[lo:hi], positions[lo:hi]))
        )
        vectors = results[0].vectors if len(results) == 1 else np.concatenate([r.vectors for r in results])
        return vectors, int(sum(sum(r.tokens) for r in results))

    async def labels(self, spec: ModelSpec, labels: list[str]) -> tuple[dict[str, np.ndarray], int]:
        """Each label's vector by the model's label recipe (its embeddings in the registry's label templates,
        averaged: ``ModelSpec.label_texts`` / ``pool_label_vectors``) and the tokens the labels count: each
        label counts the tokens of its first template text, however many templates the model averages.

        The cache holds the pooled vector per (model, label), so a warm label costs one lookup: pooling on every
        request made 256 cached labels 1.3-1.6x the cost of 2 (docs/benchmarks.md)."""
        found, missing = self._cached_labels(spec, labels)
        if missing:
            await self._embed_labels(spec, missing, found)
        return _label_result(labels, found)

    async def inputs_and_labels(
        self, spec: ModelSpec, items: list[Item], labels: list[str], *, max_total_tokens: int | None = None
    ) -> tuple[tuple[np.ndarray, int], tuple[dict[str, np.ndarray], int]]:
        """:meth:`inputs` and :meth:`labels` of one request, concurrently when a label must be embedded. When every
        label is cached (a client's usual label set) the labels are a lookup, done first, and only the inputs are
        awaited: no gather, so no tasks and event-loop turns of its own on the one-input request path."""
        found, missing = self._cached_labels(spec, labels)
        if not missing:
            return await self.inputs(spec, items, max_total_tokens=max_total_tokens), _label_result(labels, found)
        embedded, _ = await asyncio.gather(
            self.inputs(spec, items, max_total_tokens=max_total_tokens), self._embed_labels(spec, missing, found)
        )
        return embedded, _label_result(labels, found)

    def _cached_labels(self, spec: ModelSpec, labels: list[str]) -> tuple[dict[str, tuple[np.ndarray, int]], list[str]]:
        """(cached entries by label, labels not cached): one cache lookup (a hit or a miss) per label."""
        found: dict[str, tuple[np.ndarray, int]] = {}
        missing = []
        for lab in labels:
            hit = self.label_cache.get((spec.name, lab))
            if hit is None:
                missing.append(lab)
            else:
                found[lab] = hit
        return found, missing

    async def _embed_labels(self, spec: ModelSpec, missing: list[str], found: dict[str, tuple[np.ndarray, int]]) -> None:
        """Embed the ``missing`` labels into ``found`` (and the cache)."""
        texts = {lab: spec.label_texts(lab) for lab in missing}
        wanted = list(dict.fromkeys(t for lab in missing for t in texts[lab]))
        result = await self.embedder.embed(spec.name, EmbedRequest(wanted, "label", self.limits.max_input_tokens))
        if result.too_long is not None:
            raise InputTooLong(
                f"label {wanted[result.too_long][:40]!r} has {result.tokens[result.too_long]} tokens; "
                f"the limit is {self.limits.max_input_tokens}"
            )
        assert result.vectors is not None  # embedded: not too long, and labels have no token budget
        by_text = dict(zip(wanted, zip(result.vectors, result.tokens, strict=True), strict=True))
        for lab in missing:
            # pool_label_vectors returns a new array: the cache never pins the Ray result buffer.
            entry = (pool_label_vectors([by_text[t][0] for t in texts[lab]]), int(by_text[texts[lab][0]][1]))
            found[lab] = entry
            self.label_cache.put((spec.name, lab), entry)


def _label_result(labels: list[str], found: dict[str, tuple[np.ndarray, int]]) -> tuple[dict[str, np.ndarray], int]:
    return {lab: found[lab][0] for lab in labels}, sum(found[lab][1] for lab in labels)


def over_token_budget(tokens: int, budget: int | None) -> RateLimited:
    """A request that alone counts more tokens than its tokens-per-minute limit: it can never be admitted."""
    return RateLimited(
        f"This request counts {tokens} tokens, over your limit of {budget} tokens per minute: split it into "
        "smaller requests.", code=TOKEN_LIMIT, retry_after_s=60.0,
    )
