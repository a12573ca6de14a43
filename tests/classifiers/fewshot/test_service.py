"""The few-shot service over the in-process repository (ClassifierTable) and the real embedded encoder."""
import asyncio

import pytest

from classifiers.catalog.registry import build_registry
from classifiers.embedding.local import LocalEmbedder
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.fewshot.service import FewShotService, train_fingerprint
from classifiers.fewshot.table import ClassifierTable
from classifiers.protocol.errors import IdempotencyKeyReused, InvalidInput, LabelLimitExceeded, ResourceNotFound
from classifiers.protocol.wire import ClassifyRequest, TrainRequest
from classifiers.request.limits import Limits
from classifiers.storage.store import LocalDirStore, StateStore

MODEL = "all-MiniLM-L6-v2"
TRAIN = [
    {"text": "Heavy rain and wind all day tomorrow", "label": "weather"},
    {"text": "Snow and freezing fog expected tonight", "label": "weather"},
    {"text": "The striker scored twice in the final", "label": "sport"},
    {"text": "She won the tennis match in straight sets", "label": "sport"},
]


class CountingRepo(ClassifierTable):
    """The real in-process repository, counting the calls the service makes to it."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.calls = []

    async def info(self, *a, **k):
        self.calls.append("info")
        return await super().info(*a, **k)

    async def classify(self, *a, **k):
        self.calls.append("classify")
        return await super().classify(*a, **k)

    async def train(self, *a, **k):
        self.calls.append("train")
        return await super().train(*a, **k)


@pytest.fixture
def service(encoders, tmp_path):
    limits = Limits(max_classes=3)
    return FewShotService(
        registry=build_registry(["multilingual-e5-small", MODEL]), limits=limits,
        vectors=Vectors(LocalEmbedder(encoders), limits, LabelCache(100)),
        repo=CountingRepo(StateStore(LocalDirStore(tmp_path)), limits),
    )


def run(coro):
    return asyncio.run(coro)


def test_train_classify_update_list_delete(service):
    out = run(service.train(TrainRequest(model=MODEL, access="private", input=TRAIN), "alice")).response
    cid = out.classifier_id
    assert out.num_samples == 4 and out.usage.total_tokens > 0
    resp = run(service.classify(ClassifyRequest(classifier_id=cid, input=["Will it rain on Sunday?", "Who won the cup final?"]), "alice"))
    assert [d.prediction for d in resp.data] == ["weather", "sport"]
    up = run(service.train(TrainRequest(classifier_id=cid, input=[{"text": "Bake the bread for an hour", "label": "cooking "}]), "alice")).response
    assert up.num_samples == 1
    (summary,) = run(service.list("alice"))
    assert summary.labels == ["weather", "sport", "cooking"] and summary.num_samples == 5 and summary.user_id == "alice"
    assert run(service.delete(cid, "alice")).deleted
    with pytest.raises(ResourceNotFound):
        run(service.classify(ClassifyRequest(classifier_id=cid, input=["x"]), "alice"))


def test_one_repository_call_per_classify_and_update_once_the_classifier_is_known(service):
    cid = run(service.train(TrainRequest(model=MODEL, input=TRAIN), "alice")).response.classifier_id
    service.repo.calls.clear()
    run(service.classify(ClassifyRequest(classifier_id=cid, input=["rain?"]), "alice"))
    run(service.train(TrainRequest(classifier_id=cid, input=[{"text": "sunny", "label": "weather"}]), "alice"))
    run(service.classify(ClassifyRequest(classifier_id=cid, input=["goal!"]), "alice"))
    assert service.repo.calls == ["info", "classify", "train", "classify"]  # the model is looked up once


def test_private_classifiers_stay_invisible_to_others_even_when_cached(service):
    cid = run(service.train(TrainRequest(model=MODEL, access="private", input=TRAIN), "alice")).response.classifier_id
    run(service.classify(ClassifyRequest(classifier_id=cid, input=["rain?"]), "alice"))  # cached now
    for call in (
        service.classify(ClassifyRequest(classifier_id=cid, input=["rain?"]), "mallory"),
        service.train(TrainRequest(classifier_id=cid, input=[{"text": "x", "label": "weather"}]), "mallory"),
        service.delete(cid, "mallory"),
    ):
        with pytest.raises(ResourceNotFound):
            run(call)


def test_bad_requests_fail_before_model_work(service):
    with pytest.raises(LabelLimitExceeded):
        run(service.train(TrainRequest(model=MODEL, input=[{"text": f"t{i}", "label": f"l{i}"} for i in range(4)]), "alice"))
    with pytest.raises(InvalidInput, match="not both"):
        run(service.classify(ClassifyRequest(classifier_id="abc", input="x", labels=["a", "b"]), "alice"))
    with pytest.raises(ResourceNotFound):
        run(service.classify(ClassifyRequest(classifier_id="../etc/passwd", input="x"), "alice"))
    assert service.repo.calls == []


def test_the_fingerprint_is_the_request_as_parsed_not_its_bytes():
    one = TrainRequest.model_validate_json('{"model": "m", "input": [{"text": "Rain", "label": "weather"}]}')
    same = [
        TrainRequest.model_validate_json('{ "input" : [ {"label":"weather","text":"Rain"} ],\n "model":"m" }'),  # order, spaces
        TrainRequest.model_validate_json('{"model": "m", "input": {"text": "Rain", "label": "weather"}}'),  # one item
        TrainRequest.model_validate_json('{"model": "m", "num_iters": 10, "access": "public", "extra": 1,'
                                         ' "input": [{"text": "Rain", "label": "weather"}]}'),  # defaults, unknown field
    ]
    assert {train_fingerprint("alice", r) for r in same} == {train_fingerprint("alice", one)}
    other = [
        TrainRequest(model="m", input=[{"text": "Rain", "label": "finance"}]),
        TrainRequest(model="m", input=[{"text": "Rain", "label": "weather"}], num_iters=3),
        TrainRequest(model="m", access="private", input=[{"text": "Rain", "label": "weather"}]),
        TrainRequest(classifier_id="c1", input=[{"text": "Rain", "label": "weather"}]),
    ]
    prints = {train_fingerprint("alice", r) for r in other} | {train_fingerprint("bob", one), train_fingerprint("alice", one)}
    assert len(prints) == len(other) + 2


def test_an_update_id_with_another_body_is_refused_and_with_the_same_body_replayed(service):
    weather = TrainRequest(model=MODEL, input=TRAIN)
    first = run(service.train(weather, "alice", update_id="k-123")).response
    other = TrainRequest(model=MODEL, input=[{"text": "Stocks fell sharply today", "label": "finance"},
                                              {"text": "The derby ended in a draw", "label": "sports"}])
    with pytest.raises(IdempotencyKeyReused):
        run(service.train(other, "alice", update_id="k-123"))
    again = run(service.train(weather, "alice", update_id="k-123"))
    assert again.replayed and again.response.model_dump() == first.model_dump()
    (summary,) = run(service.list("alice"))
    assert summary.labels == ["weather", "sport"] and summary.num_samples == 4
    # the same id from another account names another classifier (and the ingress scopes ids by account anyway)
    theirs = run(service.train(other, "bob", update_id="k-123"))
    assert not theirs.replayed and theirs.response.classifier_id != first.classifier_id
