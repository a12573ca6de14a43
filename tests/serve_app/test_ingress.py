"""End-to-end: the real Serve app with both embedded models, over HTTP on 127.0.0.1."""
from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT
from tests.readme_claims import first_shown_result, mismatches, stated_predictions

pytestmark = pytest.mark.e2e

SIX_PROMPTS = [
    "Calculate the compound interest on a principal of $10,000 invested for 5 years at an annual rate of 5%, compounded quarterly.",
    "分析使用CRISPR基因编辑技术在人类胚胎中的伦理影响。考虑潜在的医疗益处和长期社会后果。",
    "AIが自意識を持つディストピアの未来を舞台にした短編小説を書いてください。人間とAIの関係や意識の本質をテーマに探求してください。",
    "Erklären Sie die Unterschiede zwischen Merge-Sort und Quicksort-Algorithmen in Bezug auf Zeitkomplexität, Platzkomplexität und Leistung in der Praxis.",
    "Write a poem about the beauty of nature and its healing power on the human soul.",
    "Translate the following sentence into French: The quick brown fox jumps over the lazy dog.",
]
SIX_LABELS = ["Simple task", "Complex reasoning", "Creative writing"]
# What a person would call each prompt; the compound-interest sum is arguably either.
SENSIBLE = [
    {"Simple task", "Complex reasoning"},
    {"Complex reasoning"},
    {"Creative writing"},
    {"Complex reasoning"},
    {"Creative writing"},
    {"Simple task"},
]

CLEAR_CUT = {
    "weather": ["It will be sunny and warm tomorrow with a light breeze.", "Heavy rain and thunderstorms are expected tonight."],
    "sport": ["The striker scored twice and the team won the championship final.", "She won the tennis match in straight sets."],
    "cooking": ["Simmer the tomato sauce with garlic and basil for twenty minutes.", "Knead the dough and bake the bread at 220 degrees."],
}


def _check_error(resp, status: int, code: str | None = None):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) >= {"code", "detail", "request_id"}, body
    assert body["detail"] and body["request_id"]
    assert resp.headers.get("x-request-id") == body["request_id"]
    if code:
        assert body["code"] == code, body
    return body


# Jina's Classifier product page's curl body, verbatim: every label twice, its own model name, an unknown field.
PRODUCT_PAGE_BODY = {
    "input": SIX_PROMPTS,
    "labels": ["Simple task", "Complex reasoning", "Creative writing", "Complex reasoning", "Creative writing", "Simple task"],
    "model": "jina-embeddings-v3",
    "action": "list",
}


def test_product_page_curl_body_verbatim_answers_200(http):
    r = http.post("/v1/classify", json=PRODUCT_PAGE_BODY, headers={"Authorization": "Bearer"})  # curl -H "Authorization: Bearer " sends this
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 6
    for d in data:
        assert [p["label"] for p in d["predictions"]] == SIX_LABELS
    # The same answer as the deduplicated request: collapsing is exact, not approximate. Bit for bit holds because
    # both answers come from the same replica on this machine (the label vectors from its cache, the prompts
    # embedded again in a call of the same shape, so the engine runs the same arithmetic).
    plain = http.post("/v1/classify", json={"model": "jina-embeddings-v3", "input": SIX_PROMPTS, "labels": SIX_LABELS}).json()
    assert [d["predictions"] for d in plain["data"]] == [d["predictions"] for d in data]


def test_unknown_top_level_fields_are_ignored_on_every_route(http):
    extra = {"action": "list", "foo": {"bar": [1, 2]}}
    r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": ["a", "b"], **extra})
    assert r.status_code == 200, r.text
    r = http.post("/v1/train", json={"model": "all-MiniLM-L6-v2", "input": [{"text": "sun", "label": "weather"},
                                                                          {"text": "goal", "label": "sport"}], **extra})
    assert r.status_code == 200, r.text
    cid = r.json()["classifier_id"]
    assert http.post("/v1/classify", json={"classifier_id": cid, "input": ["rain"], **extra}).status_code == 200
    assert http.post("/v1/train", json={"classifier_id": cid, "input": {"text": "snow", "label": "weather"}, **extra}).status_code == 200
    assert http.post("/v1/classifiers", json=extra).status_code == 200
    assert http.request("DELETE", f"/v1/classifiers/{cid}", json=extra).status_code == 200


def test_readme_example_prints_what_the_service_returns(http):
    """The README's first example sends the product page's prompts verbatim and states what the embedded default
    returns, whatever it is: this keeps that text true. Labels exactly, scores within the stated tolerance (they
    move slightly from one CPU to another: tests/readme_claims.py)."""
    readme = (ROOT / "README.md").read_text()
    for prompt in SIX_PROMPTS:
        assert json.dumps(prompt, ensure_ascii=False) in readme
    r = http.post("/v1/classify", json={"model": "multilingual-e5-small", "input": SIX_PROMPTS, "labels": SIX_LABELS})
    assert r.status_code == 200, r.text
    assert r.headers.get("x-request-id")
    body = r.json()
    assert [d["index"] for d in body["data"]] == list(range(6))
    for d in body["data"]:
        assert d["object"] == "classification"
        assert [p["label"] for p in d["predictions"]] == SIX_LABELS
        assert sum(p["score"] for p in d["predictions"]) == pytest.approx(1.0, abs=1e-5)
        assert d["score"] == max(p["score"] for p in d["predictions"])
    said = readme.split("The embedded default predicts, in order: ", 1)[1].split(". The fifth", 1)[0]
    answered = [(d["prediction"], d["score"]) for d in body["data"]]
    assert mismatches(stated_predictions(said), answered) == [], answered
    shown, first = first_shown_result(readme), body["data"][0]
    assert {k: v for k, v in shown.items() if k not in ("score", "predictions")} == \
        {k: v for k, v in first.items() if k not in ("score", "predictions")}
    assert mismatches([(p["label"], p["score"]) for p in shown["predictions"]],
                      [(p["label"], p["score"]) for p in first["predictions"]]) == [], first
    assert f'"usage":{{"total_tokens":{body["usage"]["total_tokens"]}}}' in readme


def test_readme_multi_label_example_prints_what_the_service_returns(http):
    """The README's multi-label example: its body verbatim (in the README's curl), the predicted label sets it
    states exactly, the first prediction's score within the stated tolerance."""
    readme = (ROOT / "README.md").read_text()
    body = {"model": "multilingual-e5-small", "input": ["The match was called off because of the storm",
                                                        "Grill the fish over a low flame"],
            "labels": ["sport", "weather", "cooking"], "multi_label": True}
    assert '"input": ["The match was called off because of the storm", "Grill the fish over a low flame"],' in readme
    assert '"labels": ["sport", "weather", "cooking"], "multi_label": true}' in readme
    r = http.post("/v1/classify", json=body)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    line = readme.split('# -> ..."prediction":"weather"', 1)[1].split("\n", 1)[0]
    stated = [json.loads("[" + part.split("]", 1)[0] + "]") for part in line.split('"predicted_labels":[')[1:]]
    assert [d["predicted_labels"] for d in data] == stated == [["weather", "sport"], ["cooking"]]
    score = float(line.split('"score":', 1)[1].split("...", 1)[0])
    assert data[0]["prediction"] == "weather"
    assert mismatches([("weather", score)], [("weather", data[0]["score"])]) == [], data[0]


@pytest.mark.parametrize("model", ["multilingual-e5-small", "all-MiniLM-L6-v2", "jina-embeddings-v3"])
def test_clear_cut_inputs_get_the_right_label(http, model):
    texts = [t for ts in CLEAR_CUT.values() for t in ts]
    expected = [lab for lab, ts in CLEAR_CUT.items() for _ in ts]
    r = http.post("/v1/classify", json={"model": model, "input": texts, "labels": list(CLEAR_CUT)})
    assert r.status_code == 200, r.text
    assert [d["prediction"] for d in r.json()["data"]] == expected


def test_single_string_and_textdoc_inputs(http):
    for inp in ["Snow is falling over the mountains tonight.", {"text": "Snow is falling over the mountains tonight."}]:
        r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": inp, "labels": list(CLEAR_CUT)})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 1 and r.json()["data"][0]["prediction"] == "weather"


def test_label_groups_give_one_prediction_per_group(http):
    labels = {"topic": ["weather", "sport", "cooking"], "sentiment": ["happy, positive", "sad, negative"]}
    r = http.post(
        "/v1/classify",
        json={"model": "all-MiniLM-L6-v2", "input": ["What a wonderful sunny day, I love this warm weather!", "I am devastated, our team lost the final badly."], "labels": labels},
    )
    assert r.status_code == 200, r.text
    d0, d1 = r.json()["data"]
    assert d0["prediction"] == {"topic": "weather", "sentiment": "happy, positive"}
    assert d1["prediction"] == {"topic": "sport", "sentiment": "sad, negative"}
    for d in (d0, d1):
        assert set(d["score"]) == set(labels) and set(d["predictions"]) == set(labels)
        for g, preds in d["predictions"].items():
            assert [p["label"] for p in preds] == labels[g]
            assert sum(p["score"] for p in preds) == pytest.approx(1.0, abs=1e-5)


def test_usage_counts_input_and_label_tokens_even_when_labels_are_cached(http, encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    texts, labels = ["one small input", "and another one"], ["alpha", "beta", "gamma"]
    expected = sum(enc.count_tokens(texts, "input")) + sum(enc.count_tokens(labels, "label"))
    for _ in range(2):  # the second call hits the label cache and is charged the same
        r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": texts, "labels": labels})
        assert r.json()["usage"]["total_tokens"] == expected


def test_long_input_is_chunk_pooled_not_refused(http):
    long_text = "The forecast says heavy rain, strong wind and cold temperatures all week. " * 120  # > 512 tokens
    r = http.post("/v1/classify", json={"model": "multilingual-e5-small", "input": [long_text], "labels": list(CLEAR_CUT)})
    assert r.status_code == 200, r.text
    assert r.json()["data"][0]["prediction"] == "weather"
    assert r.json()["usage"]["total_tokens"] > 1000


@pytest.mark.parametrize(
    "payload, status, code",
    [
        ({"model": "nope", "input": "a", "labels": ["a", "b"]}, 400, "INPUT_MODEL_NOT_FOUND"),
        ({"model": "all-MiniLM-L6-v2", "input": [], "labels": ["a", "b"]}, 400, "INPUT_INVALID"),
        ({"model": "all-MiniLM-L6-v2", "input": ["  "], "labels": ["a", "b"]}, 400, "INPUT_INVALID"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": []}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": ["only"]}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": ["a", ""]}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": ["a", " a", "a "]}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": {}}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": {"g": ["a", "a"]}}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"]}, 400, "INPUT_INVALID_LABELS"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": [f"l{i}" for i in range(257)]}, 400, "INPUT_LABEL_LIMIT_EXCEEDED"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": {f"g{i}": ["a", "b"] for i in range(9)}}, 400, "INPUT_LABEL_LIMIT_EXCEEDED"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": {"g": [f"l{i}" for i in range(65)]}}, 400, "INPUT_LABEL_LIMIT_EXCEEDED"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"] * 1025, "labels": ["a", "b"]}, 400, "INPUT_LIMIT_EXCEEDED"),
        ({"model": "all-MiniLM-L6-v2", "input": [{"image": "https://example.com/cat.jpg"}], "labels": ["a", "b"]}, 400, "INPUT_UNSUPPORTED_MODALITY"),
        ({"input": ["x"], "labels": ["a", "b"]}, 400, "INPUT_INVALID"),
        ({"model": "all-MiniLM-L6-v2", "input": [1, 2], "labels": ["a", "b"]}, 422, "INPUT_VALIDATION_FAILED"),
        ({"model": "all-MiniLM-L6-v2", "input": ["x"], "labels": "a,b"}, 422, "INPUT_VALIDATION_FAILED"),
        ({"model": 5, "input": ["x"], "labels": ["a", "b"]}, 422, "INPUT_VALIDATION_FAILED"),
        ({"model": "all-MiniLM-L6-v2", "input": [{"txt": "x"}], "labels": ["a", "b"]}, 422, "INPUT_VALIDATION_FAILED"),
        ({"model": "all-MiniLM-L6-v2", "labels": ["a", "b"]}, 422, "INPUT_VALIDATION_FAILED"),
        ([1, 2, 3], 422, "INPUT_VALIDATION_FAILED"),
    ],
)
def test_bad_input_gets_a_jina_error_body(http, payload, status, code):
    _check_error(http.post("/v1/classify", json=payload), status, code)


def test_over_long_input_is_refused_with_its_index(http):
    huge = "word " * 9000  # > 8192 tokens for every model
    body = _check_error(
        http.post("/v1/classify", json={"model": "multilingual-e5-small", "input": ["fine", huge], "labels": ["a", "b"]}),
        400, "INPUT_TOO_LONG",
    )
    assert "input[1]" in body["detail"] and "8192" in body["detail"]


def test_malformed_json_and_wrong_method_and_unknown_route(http):
    _check_error(http.post("/v1/classify", content=b'{"model": ', headers={"content-type": "application/json"}), 400, "INPUT_INVALID_JSON")
    _check_error(http.post("/v1/classify", content=b"\xff\xfe\x00garbage", headers={"content-type": "application/json"}), 400)
    _check_error(http.get("/v1/classify"), 405, "METHOD_NOT_ALLOWED")
    _check_error(http.get("/v1/nothing-here"), 404, "RESOURCE_NOT_FOUND")


def test_hostile_strings_never_cause_a_500(http):
    weird = ["\ud800 lone surrogate", "nul \x00 byte", "😀" * 50, "‮rtl", "a" * 20000, "\n\t\r"]
    r = http.post(
        "/v1/classify",
        content=json.dumps({"model": "multilingual-e5-small", "input": weird, "labels": ["x\x00", "😀 emoji"]}).encode(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["detail"] == "input[5]: text is empty", r.text  # whitespace only
    r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": weird[1:-1], "labels": ["x", "y"]})
    assert r.status_code == 200, r.text


def test_client_request_id_is_echoed(http):
    r = http.post("/v1/classify", json={"model": "nope", "input": "a", "labels": ["a", "b"]}, headers={"X-Request-ID": "my-trace-123"})
    assert r.json()["request_id"] == "my-trace-123"


def test_models_health_ready(http):
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert {"multilingual-e5-small", "all-MiniLM-L6-v2", "jina-embeddings-v3"} <= set(models)
    assert models["jina-embeddings-v3"]["alias_of"] == "multilingual-e5-small"
    assert models["multilingual-e5-small"]["input_modalities"] == ["text"]
    assert http.get("/v1/models/all-MiniLM-L6-v2").json()["served_by"]["backend"] == "torch_bert"
    _check_error(http.get("/v1/models/nope"), 400, "INPUT_MODEL_NOT_FOUND")
    assert http.get("/health").json() == {"status": "ok"}
    assert http.get("/live").status_code == 200
    ready = http.get("/ready")
    assert ready.status_code == 200 and {"multilingual-e5-small", "all-MiniLM-L6-v2"} <= set(ready.json()["models"])
    assert "/v1/classify" in http.get("/openapi.json").json()["paths"]
