"""Multi-label classification over HTTP on the real app (ours, issue 28): `multi_label` on /v1/classify (zero-shot and
few-shot, label groups, thresholds, with `abstain`), label lists in /v1/train, bad input as Jina 4xx bodies, and a
Jina client's requests answered exactly as before."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
LABELS = ["weather", "sport", "cooking", "finance"]
TEXTS = ["Heavy rain will flood the stadium and cancel the match tonight.", "Simmer the sauce for twenty minutes."]

# Examples that name every label that applies: some have two.
EXAMPLES = [
    {"text": "Rain all day tomorrow.", "label": "weather"},
    {"text": "Thunderstorms will roll in this evening.", "label": ["weather"]},
    {"text": "The striker scored twice in the final.", "label": "sport"},
    {"text": "She won the tennis final in straight sets.", "label": "sport"},
    {"text": "Knead the dough and let it rise.", "label": "cooking"},
    {"text": "Fry the onions until golden.", "label": "cooking"},
    {"text": "The match was called off because of the storm.", "label": ["sport", "weather"]},
    {"text": "Snow stopped the race halfway.", "label": ["weather", "sport"]},
    {"text": "A barbecue in the sunshine after the game.", "label": ["cooking", "weather", "sport"]},
    {"text": "The team ate pasta before the marathon.", "label": ["cooking", "sport"]},
]


@pytest.fixture(autouse=True)
def cleanup(http):
    yield
    for c in http.get("/v1/classifiers").json():
        http.delete(f"/v1/classifiers/{c['classifier_id']}")


def classify(http, **body) -> dict:
    r = http.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_zero_shot_multi_label_lists_every_label_whose_probability_reaches_the_threshold(http):
    plain = classify(http, model=MODEL, input=TEXTS, labels=LABELS)
    multi = classify(http, model=MODEL, input=TEXTS, labels=LABELS, multi_label=True)
    for p, m in zip(plain["data"], multi["data"], strict=True):
        assert "predicted_labels" not in p  # single-label: exactly Jina's result
        assert m["prediction"] == p["prediction"] and m["score"] == max(x["score"] for x in m["predictions"])
        scores = {x["label"]: x["score"] for x in m["predictions"]}
        threshold = 0.125  # the embedded models' default (/v1/models: multi_label_threshold)
        assert m["predicted_labels"] == sorted((lab for lab, s in scores.items() if s >= threshold), key=lambda lab: -scores[lab])
    assert multi["usage"] == plain["usage"]
    # a threshold of the request's own; a high one may leave an input with no label at all
    strict = classify(http, model=MODEL, input=TEXTS, labels=LABELS, multi_label={"threshold": 0.99})
    assert all(d["predicted_labels"] == [] for d in strict["data"])
    loose = classify(http, model=MODEL, input=TEXTS, labels=LABELS, multi_label={"threshold": 0.01})
    assert all(len(d["predicted_labels"]) >= len(m["predicted_labels"]) for d, m in zip(loose["data"], multi["data"], strict=True))
    card = http.get(f"/v1/models/{MODEL}").json()
    assert card["multi_label_threshold"] == 0.125


def test_label_groups_get_a_list_per_group_and_abstain_empties_an_out_of_scope_inputs_labels(http):
    groups = {"topic": ["weather", "sport", "cooking"], "tone": ["good news", "bad news"]}
    r = classify(http, model=MODEL, input=TEXTS, labels=groups, multi_label={"threshold": 0.2})
    for d in r["data"]:
        assert set(d["predicted_labels"]) == set(groups)
        for g, labels in d["predicted_labels"].items():
            assert set(labels) <= set(groups[g])
            assert labels == [x["label"] for x in sorted(d["predictions"][g], key=lambda x: -x["score"]) if x["score"] >= 0.2]
    far = classify(http, model=MODEL, input=["zxqv wvut 1234 !!!"], labels=LABELS, multi_label={"threshold": 0.01},
                   abstain={"threshold": -10})  # everything is out of scope at this threshold
    d = far["data"][0]
    assert d["out_of_scope"] is True and d["predicted_labels"] == [] and d["prediction"] in LABELS


def test_few_shot_trains_on_label_lists_and_answers_with_each_labels_own_probability(http):
    r = http.post("/v1/train", json={"model": MODEL, "access": "private", "input": EXAMPLES})
    assert r.status_code == 200, r.text
    cid, trained = r.json()["classifier_id"], r.json()
    assert trained["num_samples"] == len(EXAMPLES)  # examples, not (example, label) pairs
    (summary,) = http.get("/v1/classifiers").json()
    assert sorted(summary["labels"]) == ["cooking", "sport", "weather"]
    single = classify(http, classifier_id=cid, input=TEXTS)
    multi = classify(http, classifier_id=cid, input=TEXTS, multi_label=True)
    for s, m in zip(single["data"], multi["data"], strict=True):
        assert "predicted_labels" not in s and abs(sum(x["score"] for x in s["predictions"]) - 1) < 1e-6
        assert m["prediction"] == s["prediction"]
        assert all(0 <= x["score"] <= 1 for x in m["predictions"]) and isinstance(m["predicted_labels"], list)
    at = classify(http, classifier_id=cid, input=TEXTS, multi_label={"threshold": 0.3})
    for d in at["data"]:
        assert d["predicted_labels"] == [x["label"] for x in sorted(d["predictions"], key=lambda x: -x["score"]) if x["score"] >= 0.3]
    # updates with lists and a new class, idempotency, as for single labels
    update = {"classifier_id": cid, "input": [{"text": "Stocks fell as the storm hit the port.", "label": ["finance", "weather"]}]}
    first = http.post("/v1/train", json=update, headers={"Idempotency-Key": "ml-upd-1"})
    again = http.post("/v1/train", json=update, headers={"Idempotency-Key": "ml-upd-1"})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    assert first.json()["num_samples"] == 1
    (summary,) = http.get("/v1/classifiers").json()
    assert "finance" in summary["labels"] and summary["num_samples"] == len(EXAMPLES) + 1


def test_a_classifier_with_declared_labels_only_uses_the_zero_shot_rule(http):
    r = http.post("/v1/train", json={"model": MODEL, "input": [], "labels": LABELS})
    assert r.status_code == 200, r.text
    d = classify(http, classifier_id=r.json()["classifier_id"], input=TEXTS[:1], multi_label=True)["data"][0]
    scores = {x["label"]: x["score"] for x in d["predictions"]}
    assert d["predicted_labels"] == sorted((lab for lab, s in scores.items() if s >= 0.125), key=lambda lab: -scores[lab])


@pytest.mark.parametrize("body, status, code", [
    ({"input": [{"text": "x", "label": []}]}, 400, "INPUT_INVALID_LABELS"),
    ({"input": [{"text": "x", "label": ["a", ""]}]}, 400, "INPUT_INVALID_LABELS"),
    ({"input": [{"text": "x", "label": ["a", 3]}]}, 422, "INPUT_VALIDATION_FAILED"),
    ({"input": [{"text": "x", "label": {"a": 1}}]}, 422, "INPUT_VALIDATION_FAILED"),
])
def test_bad_label_lists_in_train_are_jina_4xx(http, body, status, code):
    r = http.post("/v1/train", json={"model": MODEL, **body})
    assert r.status_code == status and r.json()["code"] == code and r.json()["request_id"], r.text


@pytest.mark.parametrize("multi_label", [{"threshold": 0}, {"threshold": 1}, {"threshold": -0.5}, {"threshold": 1.5},
                                         {"threshold": "high"}, {"t": 0.5}, "yes", 1, 0, [True], {"threshold": None, "x": 1}])
def test_unknown_multi_label_shapes_and_thresholds_outside_0_1_are_422(http, multi_label):
    r = http.post("/v1/classify", json={"model": MODEL, "input": ["x"], "labels": ["a", "b"], "multi_label": multi_label})
    assert r.status_code == 422 and r.json()["code"] == "INPUT_VALIDATION_FAILED" and r.json()["request_id"], r.text


def test_a_jina_clients_request_is_answered_exactly_as_before(http):
    """Without the extension nothing of ours appears: the same keys in the same order as Jina's result."""
    for body in ({"model": MODEL, "input": TEXTS, "labels": LABELS},
                 {"model": MODEL, "input": TEXTS, "labels": LABELS, "multi_label": False}):
        for d in classify(http, **body)["data"]:
            assert list(d) == ["object", "index", "prediction", "score", "predictions"]
