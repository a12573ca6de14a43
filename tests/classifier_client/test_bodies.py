"""Request bodies: Jina's wire format, our extensions only when set."""
from __future__ import annotations

import pytest

from classifier_client import classify_body, embeddings_body, train_body
from classifiers.protocol.wire import Abstain, TextDoc


def test_classify_body_sends_only_what_was_given():
    assert classify_body(["a", "b"], labels=["x", "y"]) == {"input": ["a", "b"], "labels": ["x", "y"]}
    assert classify_body("one", classifier_id="c1") == {"classifier_id": "c1", "input": ["one"]}
    body = classify_body([TextDoc(text="t"), {"image": "https://x/y.jpg"}], labels={"g": ("x", "y")}, model="m")
    assert body == {"model": "m", "input": [{"text": "t"}, {"image": "https://x/y.jpg"}], "labels": {"g": ["x", "y"]}}
    assert classify_body(["a"], labels=["x", "y"], abstain=0.05)["abstain"] == {"false_alarm_rate": 0.05}
    assert classify_body(["a"], labels=["x", "y"], abstain=Abstain(threshold=2.5))["abstain"] == {"threshold": 2.5}
    with pytest.raises(TypeError):
        classify_body(["a"], labels="x,y")
    with pytest.raises(TypeError):
        classify_body([3.5], labels=["x", "y"])


def test_train_body_create_update_and_declared_labels():
    create = train_body([("Rain", "weather"), {"text": "Goal", "label": "sport"}], model="m")
    assert create == {"model": "m", "access": "private", "num_iters": 10,
                      "input": [{"text": "Rain", "label": "weather"}, {"text": "Goal", "label": "sport"}]}
    update = train_body([("Snow", "weather")], classifier_id="c1", model="ignored", access="public", num_iters=3)
    assert update == {"classifier_id": "c1", "input": [{"text": "Snow", "label": "weather"}], "num_iters": 3}
    assert train_body([], model="m", labels=["a", "b"])["labels"] == ["a", "b"]
    with pytest.raises(TypeError):
        train_body(["just text"])


def test_embeddings_body_drops_unset_options():
    assert embeddings_body("hi", model="m", task=None, dimensions=64, normalized=None) == {"model": "m", "input": ["hi"], "dimensions": 64}
