"""Vectors: the label cache's bounds (entries and bytes), and large requests embedded in interleavable chunks."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from classifiers.catalog.registry import build_registry
from classifiers.embedding.local import LocalEmbedder
from classifiers.embedding.vectors import CHUNK_TOKENS, LabelCache, Vectors, chunk_spans, entry_bytes
from classifiers.protocol.errors import InputTooLong, InsufficientBalance, RateLimited
from classifiers.request.inputs import Item
from classifiers.request.limits import Limits
from tests.accounts_fixture import make_gate


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
        self.sizes, self.costs, self.in_flight, self.max_in_flight = [], [], 0, 0

    async def embed(self, model, request):
        self.sizes.append(len(request.texts))
        self.costs.append(request.cost)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)  # let other chunks try to start
            return await super().embed(model, request)
        finally:
            self.in_flight -= 1


def test_chunk_spans_bound_texts_and_tokens():
    assert chunk_spans([1] * 70) == [(0, 32), (32, 64), (64, 70)]
    big = [CHUNK_TOKENS // 2 + 1] * 3
    assert chunk_spans(big) == [(0, 1), (1, 2), (2, 3)]
    assert chunk_spans([CHUNK_TOKENS * 2]) == [(0, 1)]  # one text longer than a chunk is its own chunk


def test_a_large_request_is_embedded_in_chunks_with_the_same_vectors(encoders):
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    emb = RecordingEmbedder(encoders)
    texts = [f"sentence number {i} about the weather" for i in range(100)]
    X, tokens = asyncio.run(Vectors(emb, Limits(), LabelCache(10)).inputs(spec, [Item("text", t) for t in texts]))
    assert emb.sizes == [32, 32, 32, 4] and emb.max_in_flight <= 2
    assert emb.costs == [sum(encoders[spec.name].count_tokens(texts[i:i + 32], "input")) for i in (0, 32, 64, 96)]
    direct = encoders[spec.name].encode(texts, "input")
    assert np.allclose(X, direct, atol=1e-5) and tokens == sum(encoders[spec.name].count_tokens(texts, "input"))


def test_an_input_over_the_per_input_limit_is_refused_while_counting_before_any_model_call(encoders):
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    emb = RecordingEmbedder(encoders)
    vectors = Vectors(emb, Limits(max_input_tokens=20), LabelCache(10))
    texts = ["short text"] * 40
    texts[37] = "word " * 30
    with pytest.raises(InputTooLong, match=r"input\[37\]"):
        asyncio.run(vectors.inputs(spec, [Item("text", t) for t in texts]))
    assert emb.sizes == []


@pytest.mark.parametrize("where", ["here", "in the embedder"])
def test_a_request_over_its_token_limit_is_refused_after_counting_to_the_limit_with_no_model_call(encoders, tmp_path, where):
    """Count, then admit, then work: 1,500 texts against a 1,000 tokens-per-minute limit are counted only until the
    total passes it (a lower bound, "at least N"), refused, and never reach the model; a request that fits is
    admitted on its exact count. The same whether this process has the tokenizer or the embedder counts."""
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    enc = encoders[spec.name]
    gate, store, _ = make_gate(tmp_path, tiers={"default": {"zeroshot": {"rpm": 100, "tpm": 1000}}})
    principal = asyncio.run(gate.principal(f"Bearer {store.create_key('a')[1]}", None))
    emb = RecordingEmbedder(encoders)
    vectors = Vectors(emb, Limits(), LabelCache(10), counters={spec.name: enc} if where == "here" else {})
    texts = [f"sentence number {i} about the weather" for i in range(1500)]
    ticket = asyncio.run(gate.admit(principal, "zeroshot"))
    with pytest.raises(RateLimited) as info:
        asyncio.run(vectors.count(spec, [Item("text", t) for t in texts], budget=ticket))
    counted = int(info.value.detail.split("at least ")[1].split()[0])
    exact = enc.count_tokens(texts, "input")
    assert 1000 < counted < 1000 + max(exact) + 1 and counted < sum(exact) / 5 and emb.sizes == []

    gate2, store2, _ = make_gate(tmp_path / "b", tiers={"default": {"zeroshot": {"rpm": 100, "tpm": 10**6}}})
    ticket = asyncio.run(gate2.admit(asyncio.run(gate2.principal(f"Bearer {store2.create_key('b')[1]}", None)), "zeroshot"))
    result = asyncio.run(vectors.count(spec, [Item("text", t) for t in texts[:40]], budget=ticket))
    assert result.text_tokens == exact[:40] and ticket.reserved == sum(exact[:40]) and emb.sizes == []


def test_a_balance_stops_counting_and_is_never_overspent(encoders, tmp_path):
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    enc = encoders[spec.name]
    gate, store, _ = make_gate(tmp_path)
    principal = asyncio.run(gate.principal(f"Bearer {store.create_key('c', balance=100)[1]}", None))
    vectors = Vectors(LocalEmbedder(encoders), Limits(), LabelCache(10), counters={spec.name: enc})
    item = [Item("text", "one two three four five six seven eight nine ten")]
    per = enc.count_tokens([item[0].value], "input")[0]
    admitted = 0
    with pytest.raises(InsufficientBalance):
        for _ in range(100):
            asyncio.run(vectors.count(spec, item, budget=asyncio.run(gate.admit(principal, "zeroshot"))))
            admitted += 1  # reserved and never released here: as if every request were still running
    assert admitted == 100 // per


def test_inputs_and_labels_embed_missing_labels_alongside_and_cached_ones_without_a_call(encoders):
    """A request's inputs and labels: new labels are embedded together with the inputs (two calls, concurrently);
    once cached, only the inputs are (one call); vectors and counts are those of inputs() and labels() called
    apart, and a label counts the tokens of its first template text."""
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    emb = RecordingEmbedder(encoders)
    vectors = Vectors(emb, Limits(), LabelCache(10))
    items, labels = [Item("text", "will it rain tomorrow?")], ["weather", "sport"]
    counted = asyncio.run(vectors.count(spec, items, labels=labels))
    X, L = asyncio.run(vectors.inputs_and_labels(spec, items, labels, counted))
    assert sorted(emb.sizes) == [1, len(spec.label_texts("weather")) + len(spec.label_texts("sport"))]
    assert emb.max_in_flight == 2  # concurrently
    assert vectors.label_cache.misses == 2 and vectors.label_cache.hits == 0
    emb.sizes.clear()
    counted2 = asyncio.run(vectors.count(spec, items, labels=labels))
    X2, L2 = asyncio.run(vectors.inputs_and_labels(spec, items, labels, counted2))
    assert emb.sizes == [1] and vectors.label_cache.hits == 2  # labels from the cache: no call for them
    alone = Vectors(LocalEmbedder(encoders), Limits(), LabelCache(10))
    X3, tokens3 = asyncio.run(alone.inputs(spec, items))
    L3, label_tokens3 = asyncio.run(alone.labels(spec, labels))
    enc = encoders[spec.name]
    assert np.allclose(X, X3, atol=1e-5) and np.allclose(X2, X3, atol=1e-5) and counted.inputs == counted2.inputs == tokens3
    assert counted.label_tokens == counted2.label_tokens == {lab: enc.count_tokens([spec.label_texts(lab)[0]], "label")[0] for lab in labels}
    assert sum(counted.label_tokens.values()) == label_tokens3 and list(L) == list(L2) == labels
    assert all(np.allclose(L[lab], L3[lab], atol=1e-5) and np.allclose(L2[lab], L3[lab], atol=1e-5) for lab in labels)
