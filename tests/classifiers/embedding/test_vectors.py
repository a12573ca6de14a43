"""Vectors: the label cache's bounds (entries and bytes), and large requests embedded in interleavable chunks."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from classifiers.catalog.registry import build_registry
from classifiers.embedding.batch import LocalEmbedder
from classifiers.embedding.vectors import CHUNK_CHARS, LabelCache, Vectors, chunk_spans, entry_bytes
from classifiers.protocol.errors import InputTooLong, RateLimited
from classifiers.request.inputs import Item
from classifiers.request.limits import Limits


def vec(dim: int = 384) -> np.ndarray:
    return np.ones(dim, np.float32)


def test_label_cache_is_bounded_in_bytes_as_well_as_entries():
    """Entries alone bound nothing: a label text can be long and a vector large. With a byte bound of three
    entries' worth, the least recently used go first, and the accounted bytes match what is kept."""
    one = entry_bytes(("m", "label-0"), (vec(), 1))
    cache = LabelCache(capacity=1000, max_bytes=3 * one)
    for i in range(10):
        cache.put(("m", f"label-{i}"), (vec(), 1))
        if i == 7:
            assert cache.get(("m", "label-5")) is not None  # recently used: kept
    stats = cache.stats()
    assert stats["size"] == 3 and stats["bytes"] <= stats["max_bytes"] == 3 * one
    assert [i for i in range(10) if cache.get(("m", f"label-{i}")) is not None] == [5, 8, 9]


def test_long_texts_and_large_vectors_take_their_real_share():
    cache = LabelCache(capacity=1000, max_bytes=100_000)
    cache.put(("m", "short"), (vec(16), 1))
    cache.put(("m", "x" * 40_000), (vec(4096), 1))  # a 40 KB text and a 16 KB vector
    assert cache.stats()["bytes"] == entry_bytes(("m", "short"), (vec(16), 1)) + entry_bytes(("m", "x" * 40_000), (vec(4096), 1))
    cache.put(("m", "y" * 60_000), (vec(4096), 1))  # over the byte bound together: the oldest entries go
    assert cache.get(("m", "short")) is None and cache.get(("m", "x" * 40_000)) is None
    assert cache.get(("m", "y" * 60_000)) is not None and cache.stats()["bytes"] <= 100_000


def test_an_entry_larger_than_the_whole_cache_is_not_cached_and_evicts_nothing():
    cache = LabelCache(capacity=10, max_bytes=10_000)
    cache.put(("m", "a"), (vec(16), 1))
    cache.put(("m", "b" * 20_000), (vec(16), 1))
    assert cache.get(("m", "a")) is not None and cache.get(("m", "b" * 20_000)) is None
    assert cache.stats()["size"] == 1


def test_replacing_an_entry_does_not_count_it_twice():
    cache = LabelCache(capacity=10, max_bytes=10**6)
    cache.put(("m", "a"), (vec(), 1))
    cache.put(("m", "a"), (vec(), 2))
    assert cache.stats()["bytes"] == entry_bytes(("m", "a"), (vec(), 1)) and cache.get(("m", "a"))[1] == 2


class RecordingEmbedder(LocalEmbedder):
    """The real in-process embedder, recording each call's size and how many were in flight at once."""

    def __init__(self, encoders):
        super().__init__(encoders)
        self.sizes, self.in_flight, self.max_in_flight = [], 0, 0

    async def embed(self, model, request):
        self.sizes.append(len(request.texts))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # let other chunks try to start
            return await super().embed(model, request)
        finally:
            self.in_flight -= 1


def test_chunk_spans_bound_texts_and_characters():
    assert chunk_spans(["a"] * 70) == [(0, 32), (32, 64), (64, 70)]
    big = ["x" * (CHUNK_CHARS // 2 + 1)] * 3
    assert chunk_spans(big) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_spans(["y" * (CHUNK_CHARS * 2)]) == [(0, 1)]  # one text longer than a chunk is its own chunk


def test_a_large_request_is_embedded_in_chunks_with_the_same_vectors(encoders):
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    emb = RecordingEmbedder(encoders)
    texts = [f"sentence number {i} about the weather" for i in range(100)]
    X, tokens = asyncio.run(Vectors(emb, Limits(), LabelCache(10)).inputs(spec, [Item("text", t) for t in texts]))
    assert emb.sizes == [32, 32, 32, 4] and emb.max_in_flight <= 2
    direct = encoders[spec.name].encode(texts, "input")
    assert np.allclose(X, direct, atol=1e-5) and tokens == sum(encoders[spec.name].count_tokens(texts, "input"))


def test_chunked_errors_name_the_request_position_and_the_budget_counts_every_chunk(encoders):
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    vectors = Vectors(LocalEmbedder(encoders), Limits(max_input_tokens=20), LabelCache(10))
    texts = ["short text"] * 40
    texts[37] = "word " * 30
    with pytest.raises(InputTooLong, match=r"input\[37\]"):
        asyncio.run(vectors.inputs(spec, [Item("text", t) for t in texts]))
    per = encoders[spec.name].count_tokens(["short text"], "input")[0]
    ok = [Item("text", "short text")] * 40
    with pytest.raises(RateLimited):
        asyncio.run(vectors.inputs(spec, ok, max_total_tokens=per * 40 - 1))
    assert asyncio.run(vectors.inputs(spec, ok, max_total_tokens=per * 40))[1] == per * 40
