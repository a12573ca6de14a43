"""Our extensions over HTTP: classifiers that start as zero-shot (declared labels) and "none of these" (abstain)."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e
MODEL = "multilingual-e5-small"
EXAMPLES = {
    "weather": ["It will rain all day tomorrow.", "Expect snow and freezing wind tonight.", "A sunny, hot afternoon is forecast.",
                "Thunderstorms are rolling in from the west.", "The fog will lift by noon."],
    "sport": ["The striker scored twice in the final.", "She won the tennis match in straight sets.",
              "The marathon runner broke the course record.", "Our team lost the basketball game by two points."],
    "cooking": ["Simmer the tomato sauce with garlic and basil.", "Knead the dough and bake the bread at 220 degrees.",
                "Whisk the eggs with sugar until fluffy.", "Roast the vegetables with olive oil and thyme."],
}
CLEAR = {"sport": "The goalkeeper saved a penalty in the last minute of the match.",
         "cooking": "Fry the onions in butter, then add the rice and stir."}
UNRELATED = ["How do I reset the password of my router?", "Please transfer 200 dollars to my savings account."]


@pytest.fixture(autouse=True)
def cleanup(http):
    yield
    for c in http.get("/v1/classifiers").json():
        http.delete(f"/v1/classifiers/{c['classifier_id']}")


def test_declared_labels_without_examples_are_predicted_from_their_names(http):
    r = http.post("/v1/train", json={
        "model": MODEL, "labels": ["weather", "sport", "cooking"],
        "input": [{"text": t, "label": "weather"} for t in EXAMPLES["weather"]],
    })
    assert r.status_code == 200, r.text
    cid = r.json()["classifier_id"]
    assert r.json()["num_samples"] == 5
    (summary,) = http.get("/v1/classifiers").json()
    assert summary["labels"] == ["weather", "sport", "cooking"]  # listing shows the declared classes
    body = http.post("/v1/classify", json={"classifier_id": cid, "input": list(CLEAR.values())}).json()
    assert [d["prediction"] for d in body["data"]] == list(CLEAR)
    assert "out_of_scope" not in body["data"][0]  # Jina's response unless abstain is asked for


def test_a_classifier_with_only_declared_labels_answers_like_zero_shot(http):
    labels = ["weather", "sport", "cooking"]
    r = http.post("/v1/train", json={"model": MODEL, "labels": labels, "input": []})
    assert r.status_code == 200 and r.json()["num_samples"] == 0, r.text
    few = http.post("/v1/classify", json={"classifier_id": r.json()["classifier_id"], "input": list(CLEAR.values())}).json()
    zero = http.post("/v1/classify", json={"model": MODEL, "labels": labels, "input": list(CLEAR.values())}).json()
    for f, z in zip(few["data"], zero["data"], strict=True):
        assert f["prediction"] == z["prediction"]
        assert [p["score"] for p in f["predictions"]] == pytest.approx([p["score"] for p in z["predictions"]], abs=1e-5)
    r = http.post("/v1/train", json={"model": MODEL, "labels": ["only-one"], "input": []})
    assert r.status_code == 400 and r.json()["code"] == "INPUT_INVALID_LABELS"
    r = http.post("/v1/train", json={"model": MODEL, "labels": [f"l{i}" for i in range(17)], "input": []})
    assert r.status_code == 400 and r.json()["code"] == "INPUT_LABEL_LIMIT_EXCEEDED"


def test_abstain_fires_on_unrelated_inputs_and_not_on_clear_in_scope_ones(http):
    items = [{"text": t, "label": lab} for lab, texts in EXAMPLES.items() for t in texts]
    cid = http.post("/v1/train", json={"model": MODEL, "input": items}).json()["classifier_id"]
    r = http.post("/v1/classify", json={
        "classifier_id": cid, "input": list(CLEAR.values()) + UNRELATED, "abstain": {"false_alarm_rate": 0.05},
    })
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["out_of_scope"] for d in data] == [False, False, True, True]
    assert all(len(d["predictions"]) == 3 for d in data)  # predictions stay complete
    assert [d["prediction"] for d in data[:2]] == list(CLEAR)
    r = http.post("/v1/classify", json={"classifier_id": cid, "input": "x", "abstain": {"false_alarm_rate": 0.05, "threshold": 2}})
    assert r.status_code == 422 and r.json()["code"] == "INPUT_VALIDATION_FAILED"
