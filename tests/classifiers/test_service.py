"""The service core with an in-process real encoder injected in place of the Ray handle."""
import asyncio

import pytest

from classifiers.api import ClassifyRequest
from classifiers.embedding import embed_batch
from classifiers.errors import InputTooLong, InvalidInput, ModelNotFound
from classifiers.limits import Limits
from classifiers.registry import build_registry
from classifiers.service import ClassificationService, LabelCache


@pytest.fixture
def service(encoders):
    calls = []

    async def embed(model, request):
        calls.append((model, request.role, len(request.texts)))
        return embed_batch(encoders[model], [request])[0]

    svc = ClassificationService(
        registry=build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"]), limits=Limits(max_input_tokens=64), embed=embed
    )
    svc.calls = calls
    return svc


def run(coro):
    return asyncio.run(coro)


def test_zero_shot_and_label_cache(service):
    req = ClassifyRequest(model="all-MiniLM-L6-v2", input=["Rain all day tomorrow", "Bake the bread"], labels=["weather", "cooking"])
    first = run(service.classify(req))
    assert [d.prediction for d in first.data] == ["weather", "cooking"]
    assert ("all-MiniLM-L6-v2", "label", 2) in service.calls
    service.calls.clear()
    second = run(service.classify(req))
    assert service.calls == [("all-MiniLM-L6-v2", "input", 2)]  # labels came from the cache
    assert second.usage.total_tokens == first.usage.total_tokens
    assert service.label_cache.stats()["hits"] == 2


def test_errors_are_raised_before_model_work(service):
    with pytest.raises(ModelNotFound):
        run(service.classify(ClassifyRequest(model="x", input="a", labels=["a", "b"])))
    with pytest.raises(InvalidInput):
        run(service.classify(ClassifyRequest(input="a", labels=["a", "b"])))
    assert service.calls == []
    with pytest.raises(InputTooLong, match=r"input\[0\] has \d+ tokens; the limit is 64"):
        run(service.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input="word " * 100, labels=["a", "b"])))
    with pytest.raises(InputTooLong, match="label"):
        run(service.classify(ClassifyRequest(model="all-MiniLM-L6-v2", input="x", labels=["a", "word " * 100])))


def test_label_cache_is_lru_bounded():
    c = LabelCache(2)
    c.put(("m", "a"), (1, 1))
    c.put(("m", "b"), (2, 1))
    assert c.get(("m", "a")) == (1, 1)
    c.put(("m", "c"), (3, 1))
    assert c.get(("m", "b")) is None and c.get(("m", "a")) is not None and c.get(("m", "c")) is not None
