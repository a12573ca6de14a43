"""The zero-shot service core with the real embedded encoders in-process (LocalEmbedder), no Ray."""
import asyncio

import pytest

from classifiers.catalog.registry import build_registry
from classifiers.embedding.local import LocalEmbedder
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.protocol.errors import InputTooLong, InvalidInput, ModelNotFound
from classifiers.protocol.wire import ClassifyRequest
from classifiers.request.limits import Limits
from classifiers.zeroshot.service import ZeroShotService


class CountingEmbedder(LocalEmbedder):
    """The real in-process embedder, recording which model calls the service made."""

    def __init__(self, encoders):
        super().__init__(encoders)
        self.calls = []

    async def embed(self, model, request):
        self.calls.append((model, request.role, len(request.texts)))
        return await super().embed(model, request)


@pytest.fixture
def embedder(encoders):
    return CountingEmbedder(encoders)


@pytest.fixture
def service(embedder):
    limits = Limits(max_input_tokens=64)
    return ZeroShotService(
        registry=build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"]), limits=limits,
        vectors=Vectors(embedder, limits, LabelCache(100)),
    )


def run(coro):
    return asyncio.run(coro)


def test_zero_shot_and_label_cache(service, embedder):
    req = ClassifyRequest(model="all-MiniLM-L6-v2", input=["Rain all day tomorrow", "Bake the bread"], labels=["weather", "cooking"])
    first = run(service.classify(req))
    assert [d.prediction for d in first.data] == ["weather", "cooking"]
    assert ("all-MiniLM-L6-v2", "label", 2) in embedder.calls
    embedder.calls.clear()
    second = run(service.classify(req))
    assert embedder.calls == [("all-MiniLM-L6-v2", "input", 2)]  # labels came from the cache
    assert second.usage.total_tokens == first.usage.total_tokens
    assert service.vectors.label_cache.stats()["hits"] == 2


def test_errors_are_raised_before_model_work(service, embedder):
    with pytest.raises(ModelNotFound):
        run(service.classify(ClassifyRequest(model="x", input="a", labels=["a", "b"])))
    with pytest.raises(InvalidInput):
        run(service.classify(ClassifyRequest(input="a", labels=["a", "b"])))
    assert embedder.calls == []
    with pytest.raises(InputTooLong, match=r"input\[0\] has \d+ tokens; the limit is 64"):
        run(service.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input="word " * 100, labels=["a", "b"])))
    with pytest.raises(InputTooLong, match="label"):  # within max_label_chars (240), over the 64 tokens
        run(service.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input="x", labels=["a", "w. " * 80])))


def test_label_cache_is_lru_bounded():
    c = LabelCache(2)
    c.put(("m", "a"), (1, 1))
    c.put(("m", "b"), (2, 1))
    assert c.get(("m", "a")) == (1, 1)
    c.put(("m", "c"), (3, 1))
    assert c.get(("m", "b")) is None and c.get(("m", "a")) is not None and c.get(("m", "c")) is not None


def test_a_response_over_its_size_bound_is_refused_before_any_model_work(embedder):
    from classifiers.protocol.errors import InputLimitExceeded

    limits = Limits(max_response_bytes=20_000)
    svc = ZeroShotService(
        registry=build_registry(["all-MiniLM-L6-v2"]), limits=limits, vectors=Vectors(embedder, limits, LabelCache(10))
    )
    labels = [f"label {i} " + "x" * 200 for i in range(4)]  # ~1 KB of labels echoed per input
    with pytest.raises(InputLimitExceeded, match="response"):
        asyncio.run(svc.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input=["hi"] * 30, labels=labels)))
    assert embedder.calls == []
    asyncio.run(svc.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input=["hi"] * 5, labels=labels)))
