"""Checked request items and labels -> token counts (admitted before any model work), then vectors, through an
:class:`Embedder`.

Every service needs the same three things: a request's tokens counted and admitted first (:meth:`Vectors.count`),
its inputs embedded in request order (texts and images of one request concurrently, errors naming each item's
position), and label names embedded in the model's label template, cached. This module is that one piece; the
embedder behind it is the Ray deployments' handles in the service (``serve_app.embedders.HandleEmbedder``) or an in-process encoder
(:class:`classifiers.embedding.local.LocalEmbedder`) in tests, benchmarks and tools.
"""
from __future__ import annotations

import asyncio
import sys
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Awaitable, Callable, Mapping, Sequence, TypeVar, cast

import numpy as np

from classifiers.catalog.registry import ModelSpec, pool_label_vectors
from classifiers.embedding.engines.base import Role
from classifiers.embedding.requests import CountRequest, Embedder, EmbedRequest, ImageEmbedRequest
from classifiers.embedding.tokens import (
    TextCount,
    TokenBudget,
    TokenCounter,
    TokenizingCounter,
    count_slice,
    count_texts,
    slice_spans,
    tokenize_texts,
)
from classifiers.images.stream import image_tokens
from classifiers.protocol.errors import InputTooLong
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
CHUNK_TOKENS = 2048  # and at most this many tokens (one text alone may be more): one CPU forward pass's budget
CHUNK_IMAGES = 16  # images per embedder call (each is fetched, decoded and encoded there)
CHUNKS_IN_FLIGHT = 2  # chunks of one request queued at the embedder at once: one computing, one waiting
INLINE_COUNT_CHARS = 2048  # requests with at most this much text are counted on the event loop (< ~1 ms)


def chunk_spans(tokens: list[int]) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of texts with these token counts: at most CHUNK_TEXTS texts and (unless one text alone
    is more) CHUNK_TOKENS tokens each."""
    spans, lo, used = [], 0, 0
    for i, n in enumerate(tokens):
        if i > lo and (i - lo >= CHUNK_TEXTS or used + n > CHUNK_TOKENS):
            spans.append((lo, i))
            lo, used = i, 0
        used += n
    spans.append((lo, len(tokens)))
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


@dataclass(frozen=True)
class Counted:
    """A request's tokens, counted and admitted before any model work: per text input (request order of the text
    items), per image, per label (the first text of its template, as charged)."""

    text_tokens: list[int]
    image_tokens: int
    n_images: int
    label_tokens: dict[str, int]
    text_ids: list[list[int]] | None = None  # the texts' content ids, when this process tokenised them (small requests)

    @property
    def inputs(self) -> int:
        return sum(self.text_tokens) + self.image_tokens * self.n_images

    @property
    def total(self) -> int:
        return self.inputs + sum(self.label_tokens.values())


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

    def peek(self, key: tuple[str, str]) -> tuple[np.ndarray, int] | None:
        """The entry, if cached, without counting a hit or refreshing its place (counting a request's labels)."""
        return self._data.get(key)

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
    """Counts, then embeds, inputs and labels for the services; owns the label cache.

    ``counters``: the served models' tokenizers in this process (``classifiers.embedding.tokens.load_counter``);
    a model without one is counted by its embedder (``Embedder.count``, one call)."""

    def __init__(
        self, embedder: Embedder, limits: Limits, label_cache: LabelCache,
        counters: Mapping[str, TokenCounter] | None = None,
    ):
        self.embedder = embedder
        self.limits = limits
        self.label_cache = label_cache
        self.counters = dict(counters or {})
        # whose ids are the engine's: decided once (an isinstance check on a runtime Protocol costs ~10 µs)
        self._tokenizing = {name: isinstance(c, TokenizingCounter) for name, c in self.counters.items()}
        self._counting: ThreadPoolExecutor | None = None  # one thread: large requests are counted one slice at a time

    async def count(
        self, spec: ModelSpec, items: list[Item], *, labels: Sequence[str] = (), budget: TokenBudget | None = None,
        multiplier: int = 1,
    ) -> Counted:
        """Count a request's tokens (its inputs; its labels, for zero-shot) and admit them through ``budget``
        (x ``multiplier``: /train's num_iters), all before any model work.

        Counting stops at the first input over the per-input limit (InputTooLong) and once the count passes
        ``budget.stop_at`` (the request then can never be admitted: ``budget.over_limit``, naming the count so far as
        "at least N"), so an oversized request costs little to refuse. Images count their fixed rate."""
        stop = budget.stop_at if budget is not None else None
        n_images = sum(1 for it in items if it.kind == "image")
        per_image = image_tokens(spec) if n_images else 0
        label_tokens = await self._label_tokens(spec, labels)
        fixed = per_image * n_images + sum(label_tokens.values())
        positions = [i for i, it in enumerate(items) if it.kind == "text"]
        limit = None if stop is None else stop // multiplier - fixed
        counted = await self._count_texts(spec, [items[i].value for i in positions], "input", limit)
        if counted.too_long is not None:
            i = counted.too_long
            raise InputTooLong(
                f"input[{positions[i]}] has {counted.tokens[i]} tokens; the limit is {self.limits.max_input_tokens} per input"
            )
        if not counted.complete or (limit is not None and limit < 0):
            assert budget is not None  # only a budget stops counting early
            raise await budget.over_limit((fixed + counted.total) * multiplier)
        result = Counted(counted.tokens, per_image, n_images, label_tokens, counted.ids)
        if budget is not None:
            await budget.admit_tokens(result.total * multiplier)
        return result

    async def _label_tokens(self, spec: ModelSpec, labels: Sequence[str]) -> dict[str, int]:
        """What each label is charged: the tokens of its first template text (cached with its vector)."""
        out: dict[str, int] = {}
        missing = []
        for lab in labels:
            hit = self.label_cache.peek((spec.name, lab))
            if hit is None:
                missing.append(lab)
            else:
                out[lab] = hit[1]
        if missing:
            counted = await self._count_texts(spec, [spec.label_texts(lab)[0] for lab in missing], "label", None)
            if counted.too_long is not None:
                lab = missing[counted.too_long]
                raise InputTooLong(
                    f"label {lab[:40]!r} has {counted.tokens[counted.too_long]} tokens; the limit is {self.limits.max_input_tokens}"
                )
            out.update(zip(missing, counted.tokens, strict=True))
        return {lab: out[lab] for lab in labels}

    async def _count_texts(self, spec: ModelSpec, texts: list[str], role: Role, stop_at: int | None) -> TextCount:
        """Tokens per text, stopping as :func:`~classifiers.embedding.tokens.count_slice` says: in this process when
        it has the model's tokenizer (small requests on the event loop, larger ones slice by slice on the counting
        thread), else by the model's embedder."""
        if not texts:
            return TextCount()
        max_tokens = self.limits.max_input_tokens
        counter = self.counters.get(spec.name)
        if counter is None:
            return await self.embedder.count(spec.name, CountRequest(texts, role, max_tokens, stop_at))
        if sum(len(t) for t in texts) <= INLINE_COUNT_CHARS:
            if self._tokenizing[spec.name]:  # its ids are the engine's: the replica need not tokenise
                return tokenize_texts(cast(TokenizingCounter, counter), texts, role, stop_at=stop_at, max_tokens=max_tokens)
            return count_texts(counter, texts, role, stop_at=stop_at, max_tokens=max_tokens)
        if self._counting is None:
            self._counting = ThreadPoolExecutor(max_workers=1, thread_name_prefix="token-count")
        loop, done = asyncio.get_running_loop(), TextCount()
        for lo, hi in slice_spans(texts):
            await loop.run_in_executor(self._counting, partial(
                count_slice, partial(counter.count_tokens, role=role), texts[lo:hi], done, stop_at=stop_at,
                max_tokens=max_tokens,
            ))
            if not done.complete:
                break
        return done

    async def inputs(
        self, spec: ModelSpec, items: list[Item], counted: Counted | None = None, *, tenant: str = ""
    ) -> tuple[np.ndarray, int]:
        """Embed checked, counted input items in request order; returns (N, D) vectors and the tokens they count.
        Without ``counted`` they are counted first (no budget: tools and tests).

        Texts and images of one request go to the model's embedder concurrently (images: fetched and decoded
        there, outside the model's batch loop); errors name the item's position in the request. ``tenant`` names
        whose work this is in the embedder's fair queue."""
        if counted is None:
            counted = await self.count(spec, items)
        texts = [i for i, it in enumerate(items) if it.kind == "text"]
        images = [i for i, it in enumerate(items) if it.kind == "image"]
        jobs, parts_at = [], []
        if texts:
            jobs.append(self._texts(spec, [items[i].value for i in texts], texts, counted, tenant))
            parts_at.append(texts)
        if images:
            jobs.append(self._images(spec, [items[i].value for i in images], images, tenant))
            parts_at.append(images)
        parts = [await jobs[0]] if len(jobs) == 1 else await asyncio.gather(*jobs)  # one kind: no task for a gather
        out = np.empty((len(items), parts[0].shape[1]), np.float32)
        for positions, vectors in zip(parts_at, parts, strict=True):
            out[positions] = vectors
        return out, counted.inputs

    async def _texts(
        self, spec: ModelSpec, texts: list[str], positions: list[int], counted: Counted, tenant: str
    ) -> np.ndarray:
        """Embed in chunks of at most CHUNK_TEXTS texts / CHUNK_TOKENS tokens (:func:`in_chunks`).

        Why: ``@serve.batch`` coalesces *requests*, so one 1024-input request would be one giant model call that
        every short request batched with it waits for. Chunks enter the embedder's fair queue a few at a time and
        other tenants' requests go first or in between; a big request costs the others at most a chunk's time."""

        tokens, ids = counted.text_tokens, counted.text_ids

        async def one(lo: int, hi: int) -> np.ndarray:
            request = EmbedRequest(texts[lo:hi], "input", self.limits.max_input_tokens, tenant, sum(tokens[lo:hi]),
                                   counts=tokens[lo:hi], ids=None if ids is None else ids[lo:hi])
            result = await self.embedder.embed(spec.name, request)
            if result.too_long is not None:  # counted before admission: only a tokenizer mismatch gets here
                i = result.too_long
                raise InputTooLong(
                    f"input[{positions[lo + i]}] has {result.tokens[i]} tokens; the limit is "
                    f"{self.limits.max_input_tokens} per input"
                )
            assert result.vectors is not None  # embedded: not too long
            return result.vectors

        vectors = await in_chunks(chunk_spans(tokens), one)
        return vectors[0] if len(vectors) == 1 else np.concatenate(vectors)

    async def _images(self, spec: ModelSpec, values: list[str], positions: list[int], tenant: str) -> np.ndarray:
        """Images in chunks of CHUNK_IMAGES (:func:`in_chunks`): one request's images never hold the embedder's
        fetchers and batches for long (see ``_texts``)."""
        spans = [(lo, min(lo + CHUNK_IMAGES, len(values))) for lo in range(0, len(values), CHUNK_IMAGES)]
        results = await in_chunks(
            spans,
            lambda lo, hi: self.embedder.embed_images(spec.name, ImageEmbedRequest(values[lo:hi], positions[lo:hi], tenant)),
        )
        return results[0].vectors if len(results) == 1 else np.concatenate([r.vectors for r in results])

    async def labels(self, spec: ModelSpec, labels: list[str], *, tenant: str = "") -> tuple[dict[str, np.ndarray], int]:
        """Each label's vector by the model's label recipe (its embeddings in the registry's label templates,
        averaged: ``ModelSpec.label_texts`` / ``pool_label_vectors``) and the tokens the labels count: each
        label counts the tokens of its first template text, however many templates the model averages.

        The cache holds the pooled vector per (model, label), so a warm label costs one lookup: pooling on every
        request made 256 cached labels 1.3-1.6x the cost of 2 (docs/benchmarks.md)."""
        found, missing = self._cached_labels(spec, labels)
        if missing:
            await self._embed_labels(spec, missing, found, tenant)
        return _label_result(labels, found)

    async def inputs_and_labels(
        self, spec: ModelSpec, items: list[Item], labels: list[str], counted: Counted, *, tenant: str = ""
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`inputs` and :meth:`labels` of one counted request, concurrently when a label must be embedded. When
        every label is cached (a client's usual label set) the labels are a lookup, done first, and only the inputs
        are awaited: no gather, so no tasks and event-loop turns of its own on the one-input request path."""
        found, missing = self._cached_labels(spec, labels)
        if not missing:
            return (await self.inputs(spec, items, counted, tenant=tenant))[0], _label_result(labels, found)[0]
        (vectors, _), _ = await asyncio.gather(
            self.inputs(spec, items, counted, tenant=tenant), self._embed_labels(spec, missing, found, tenant)
        )
        return vectors, _label_result(labels, found)[0]

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

    async def _embed_labels(
        self, spec: ModelSpec, missing: list[str], found: dict[str, tuple[np.ndarray, int]], tenant: str
    ) -> None:
        """Embed the ``missing`` labels into ``found`` (and the cache)."""
        texts = {lab: spec.label_texts(lab) for lab in missing}
        wanted = list(dict.fromkeys(t for lab in missing for t in texts[lab]))
        cost = sum(len(t) for t in wanted) // 4 + len(wanted)  # labels are short: an estimate is enough to queue by
        result = await self.embedder.embed(
            spec.name, EmbedRequest(wanted, "label", self.limits.max_input_tokens, tenant, cost)
        )
        if result.too_long is not None:
            raise InputTooLong(
                f"label {wanted[result.too_long][:40]!r} has {result.tokens[result.too_long]} tokens; "
                f"the limit is {self.limits.max_input_tokens}"
            )
        assert result.vectors is not None  # embedded: not too long
        by_text = dict(zip(wanted, zip(result.vectors, result.tokens, strict=True), strict=True))
        for lab in missing:
            # pool_label_vectors returns a new array: the cache never pins the Ray result buffer.
            entry = (pool_label_vectors([by_text[t][0] for t in texts[lab]]), int(by_text[texts[lab][0]][1]))
            found[lab] = entry
            self.label_cache.put((spec.name, lab), entry)


def _label_result(labels: list[str], found: dict[str, tuple[np.ndarray, int]]) -> tuple[dict[str, np.ndarray], int]:
    return {lab: found[lab][0] for lab in labels}, sum(found[lab][1] for lab in labels)
