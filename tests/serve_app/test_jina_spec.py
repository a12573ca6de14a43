"""Every kind of response the service sends, validated against Jina's published OpenAPI spec.

The schema for each check is the one the spec gives for that route, method and status (following its
``$ref``s into ``components``), with formats enforced (``uuid``, ``date-time``), so a field Jina types as a
UUID or a timestamp must be one. Extra fields of ours are fine wherever the spec allows additional properties.
"""
from __future__ import annotations

import copy
import json

import pytest
from jsonschema import Draft202012Validator, FormatChecker

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e

SPEC_PATH = ROOT.parent / "shared" / "jina-api" / "openapi.json"
MODEL = "all-MiniLM-L6-v2"
EXAMPLES = [
    {"text": "Heavy rain and thunderstorms tonight", "label": "weather"},
    {"text": "The striker scored twice in the final", "label": "sport"},
    {"text": "Sunny and warm all weekend", "label": "weather"},
]


def load_spec() -> dict:
    if not SPEC_PATH.is_file():
        pytest.fail(f"Jina's spec is missing at {SPEC_PATH}: the contract these tests check")
    return json.loads(SPEC_PATH.read_text())


@pytest.fixture(scope="module")
def spec() -> dict:
    return load_spec()


def _response_schema(spec: dict, route: str, method: str, status: int) -> dict:
    responses = spec["paths"][route][method]["responses"]
    assert str(status) in responses, f"the spec lists no {status} for {method.upper()} {route}"
    entry = responses[str(status)]
    if "$ref" in entry:
        entry = spec["components"]["responses"][entry["$ref"].rsplit("/", 1)[-1]]
    return entry["content"]["application/json"]["schema"]


def check(spec: dict, resp, route: str, method: str = "post") -> dict:
    """Validate one real response against the spec's schema for its route, method and status."""
    schema = _response_schema(spec, route, method, resp.status_code)
    # The whole spec is the root document, so `#/components/...` references resolve inside it.
    validator = Draft202012Validator({**spec, **schema}, format_checker=FormatChecker())
    body = resp.json()
    errors = sorted(validator.iter_errors(body), key=lambda e: list(e.path))
    assert not errors, f"{method.upper()} {route} {resp.status_code} breaks Jina's spec: " + "; ".join(
        f"{'/'.join(map(str, e.path)) or '<body>'}: {e.message}" for e in errors[:5]
    )
    return body


def test_the_validator_catches_what_the_spec_forbids(spec):
    """The check above must be able to fail: a listing with the old non-UUID owner is refused."""

    class Fake:
        status_code = 200

        def __init__(self, body):
            self._body = body

        def json(self):
            return self._body

    summary = {
        "classifier_id": "2b0c5f8e-3d4f-4b8a-9c3e-1f2a3b4c5d6e", "user_id": "anonymous", "model": MODEL,
        "labels": ["a", "b"], "access": "public", "updated_number": 0, "used_number": 0,
        "created_at": "2026-01-01T00:00:00+00:00", "updated_at": "2026-01-01T00:00:00+00:00",
    }
    with pytest.raises(AssertionError, match="user_id"):
        check(spec, Fake([summary]), "/v1/classifiers", "get")
    check(spec, Fake([{**summary, "user_id": "00000000-0000-4000-8000-000000000000"}]), "/v1/classifiers", "get")
    listing = copy.deepcopy(spec["components"]["schemas"]["ModelListResponse"]["example"])
    check(spec, Fake(listing), "/v1/models", "get")
    del listing["data"][0]["pricing"]["input_cache_read"]
    with pytest.raises(AssertionError, match="input_cache_read"):
        check(spec, Fake(listing), "/v1/models", "get")


def test_zero_shot_list_and_groups(http, spec):
    r = http.post("/v1/classify", json={"model": MODEL, "input": ["Will it rain?", {"text": "Who won?"}], "labels": ["weather", "sport"]})
    assert r.status_code == 200
    check(spec, r, "/v1/classify")
    r = http.post("/v1/classify", json={
        "model": MODEL, "input": "Will it rain?", "labels": {"topic": ["weather", "sport"], "tone": ["calm", "angry"]},
    })
    assert r.status_code == 200
    check(spec, r, "/v1/classify")


def test_train_classify_list_delete(http, spec):
    created = http.post("/v1/train", json={"model": MODEL, "access": "private", "input": EXAMPLES})
    assert created.status_code == 200, created.text
    cid = check(spec, created, "/v1/train")["classifier_id"]
    updated = http.post("/v1/train", json={"classifier_id": cid, "input": {"text": "Snow expected", "label": "weather"}})
    assert updated.status_code == 200
    check(spec, updated, "/v1/train")
    r = http.post("/v1/classify", json={"classifier_id": cid, "input": ["Is it going to snow?", "Match report"]})
    assert r.status_code == 200
    check(spec, r, "/v1/classify")
    for method in ("get", "post"):
        listing = http.request(method.upper(), "/v1/classifiers")
        assert listing.status_code == 200
        assert cid in [c["classifier_id"] for c in check(spec, listing, "/v1/classifiers", method)]
    deleted = http.delete(f"/v1/classifiers/{cid}")
    assert deleted.status_code == 200
    check(spec, deleted, "/v1/classifiers/{classifier_id}", "delete")


def test_embeddings(http, spec):
    for body in ({"model": MODEL, "input": ["Will it rain?", {"text": "Who won?"}]},
                 {"model": MODEL, "input": "Will it rain?", "embedding_type": "base64", "task": "retrieval.query"},
                 {"model": "jina-embeddings-v3", "input": ["Wird es regnen?"], "embedding_type": "ubinary"}):
        r = http.post("/v1/embeddings", json=body)
        assert r.status_code == 200, r.text
        out = check(spec, r, "/v1/embeddings")
        n = len(body["input"]) if isinstance(body["input"], list) else 1
        assert [d["index"] for d in out["data"]] == list(range(n)) and out["usage"]["total_tokens"] > 0
    # Several types at once: one dict per item keyed by type (Jina's behaviour; its spec only types single ones).
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "embedding_type": ["float", "binary"]})
    assert r.status_code == 200 and set(r.json()["data"][0]["embedding"]) == {"float", "binary"}
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": "x", "dimensions": 64})
    assert r.status_code == 400 and "Matryoshka" in r.json()["detail"]
    check(spec, r, "/v1/embeddings")


def test_models(http, spec):
    r = http.get("/v1/models")
    assert r.status_code == 200 and r.json()["data"]
    check(spec, r, "/v1/models", "get")
    r = http.get(f"/v1/models/{MODEL}")
    assert r.status_code == 200
    check(spec, r, "/v1/models/{model_id}", "get")


@pytest.mark.parametrize(
    "route, method, body, status",
    [
        ("/v1/classify", "post", {"model": "nope", "input": "a", "labels": ["a", "b"]}, 400),
        ("/v1/classify", "post", {"model": MODEL, "input": "a", "labels": ["a", " a"]}, 400),
        ("/v1/classify", "post", {"model": MODEL, "input": [1], "labels": ["a", "b"]}, 422),
        ("/v1/classify", "post", {"classifier_id": "0b5d9c1e-0000-4000-8000-000000000000", "input": "a"}, 404),
        ("/v1/train", "post", {"model": MODEL, "input": [{"text": "a", "label": "x"}] * 513}, 422),
        ("/v1/train", "post", {"model": MODEL, "input": [{"text": "a", "label": "x"}, {"text": "b", "label": "x"}]}, 400),
        ("/v1/train", "post", {"classifier_id": "0b5d9c1e-0000-4000-8000-000000000000", "input": {"text": "a", "label": "x"}}, 404),
        ("/v1/classifiers/{classifier_id}", "delete", None, 404),
        ("/v1/models/{model_id}", "get", None, 400),
    ],
)
def test_error_statuses(http, spec, route, method, body, status):
    path = route.replace("{classifier_id}", "0b5d9c1e-0000-4000-8000-000000000000").replace("{model_id}", "nope")
    r = http.request(method.upper(), path, json=body)
    assert r.status_code == status, r.text
    err = check(spec, r, route, method)
    assert err["code"] and err["detail"] and err["request_id"] == r.headers["x-request-id"]


def test_class_limit(http, spec):
    r = http.post("/v1/train", json={"model": MODEL, "input": [{"text": f"t{i}", "label": f"l{i}"} for i in range(17)]})
    assert r.status_code == 400 and r.json()["code"] == "INPUT_LABEL_LIMIT_EXCEEDED"
    check(spec, r, "/v1/train")
    # The 403 (the owner's classifier limit) is checked where it is produced: test_fewshot_http.py.


def _resolve(doc: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _ok_schema(operation: dict) -> dict:
    return operation["responses"].get("200", {}).get("content", {}).get("application/json", {}).get("schema", {})


def _unpromised(ours: dict, our_schema: dict, spec: dict, their_schema: dict, at: str) -> list[str]:
    """Fields Jina's schema requires that ours does not, following required properties and array items."""
    a, b = _resolve(ours, our_schema), _resolve(spec, their_schema)
    if b.get("type") == "array" and "items" in b:
        return _unpromised(ours, a.get("items", {}), spec, b["items"], f"{at}[]") if a.get("type") == "array" \
            else [f"{at}: an array in Jina's spec"]
    missing = [f"{at}.{name}" for name in b.get("required", []) if name not in a.get("required", [])]
    for name in set(b.get("required", [])) & set(a.get("required", [])):
        missing += _unpromised(ours, a["properties"][name], spec, b["properties"][name], f"{at}.{name}")
    return missing


def test_every_route_has_a_response_model_that_keeps_jinas_promises(http, spec):
    """/openapi.json types every route's answer (a model, not `{}`); where Jina defines the route, our model requires
    every field Jina's requires, down through lists and nested objects (our answers may add fields: Jina's spec
    allows them)."""
    ours = http.get("/openapi.json").json()
    untyped, unpromised = [], []
    for route, operations in ours["paths"].items():
        for method, operation in operations.items():
            schema = _ok_schema(operation)
            target = _resolve(ours, schema.get("items", schema)) if schema else {}
            if not target.get("properties"):
                untyped.append(f"{method.upper()} {route}")
            theirs = _ok_schema(spec["paths"].get(route, {}).get(method, {"responses": {}}))
            if schema and theirs:
                unpromised += _unpromised(ours, schema, spec, theirs, f"{method.upper()} {route}")
    assert not untyped, f"routes without a response model: {untyped}"
    assert not unpromised, f"fields Jina's spec requires that our response models do not: {unpromised}"
    cards = ours["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert cards == {"$ref": "#/components/schemas/ModelList"}


def test_informational_answers_match_jinas_spec_and_their_models(http, spec):
    from classifiers.protocol.info import Health, Readiness, ServiceStats

    for route, model in (("/health", Health), ("/live", Health), ("/ready", Readiness)):
        r = http.get(route)
        assert r.status_code == 200, r.text
        model.model_validate(check(spec, r, route, "get"))
    stats = ServiceStats.model_validate(http.get("/v1/stats").json())
    assert MODEL in stats.embedders and stats.ingress.pid > 0 and stats.embed_calls.calls >= 0
