"""Idempotency-Key on /v1/train against the real app (issue 24): a retry of the same request replays the first
answer; the key with another body is a 422 that applies nothing; a key whose first request is still running is a
409 (or, once it finished, the replay); X-Request-ID is a tracing id, never a retry key. Keys are remembered in
the classifier's stored record, so all of this holds across a restart of the state shards."""
from __future__ import annotations

import json
import threading

import pytest
import ray
from ray import serve

from classifiers.protocol.errors import IdempotencyKeyReused
from classifiers.protocol.wire import TrainRequest
from tests.serve_app.test_jina_spec import check, load_spec

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
FIRST = [{"text": "Heavy rain and wind all day tomorrow.", "label": "weather"},
         {"text": "The cat chased a mouse across the barn.", "label": "animals"}]
OTHER = [{"text": "The stock market fell sharply today.", "label": "finance"},
         {"text": "The striker scored a late winner.", "label": "sports"}]
MORE = [{"text": "Snow and freezing fog expected tonight.", "label": "weather"}]


@pytest.fixture(autouse=True)
def cleanup(http):
    yield
    for c in http.get("/v1/classifiers").json():
        http.delete(f"/v1/classifiers/{c['classifier_id']}")


def listed(http) -> dict[str, dict]:
    return {c["classifier_id"]: c for c in http.get("/v1/classifiers").json()}


def usage(http) -> tuple[int, int]:
    """The anonymous account's charged tokens and requests (the ledger plus this replica's pending counts)."""
    u = http.get("/v1/usage").json()
    return u["tokens"], u["requests"]


def is_refusal(r, status: int, code: str) -> bool:
    body = r.json()
    return r.status_code == status and body["code"] == code and body["detail"] and body["request_id"] == r.headers["x-request-id"]


def test_the_same_key_and_body_answer_the_first_response_and_apply_once(http):
    first = http.post("/v1/train", headers={"Idempotency-Key": "k-123"}, json={"model": MODEL, "input": FIRST})
    assert first.status_code == 200, first.text
    assert first.json()["num_samples"] == 2
    charged = usage(http)
    # the same request, its JSON spelled differently (key order, spacing, a default written out): the same request
    respelled = json.dumps({"num_iters": 10, "input": [{"label": e["label"], "text": e["text"]} for e in FIRST], "model": MODEL}, indent=2)
    for body in ({"content": json.dumps({"model": MODEL, "input": FIRST})}, {"content": respelled}):
        again = http.post("/v1/train", headers={"Idempotency-Key": "k-123", "Content-Type": "application/json"}, **body)
        assert again.status_code == 200 and again.content == first.content  # byte for byte
    cid = first.json()["classifier_id"]
    update = {"classifier_id": cid, "input": MORE}
    u1 = http.post("/v1/train", headers={"Idempotency-Key": "u-1"}, json=update)
    u2 = http.post("/v1/train", headers={"Idempotency-Key": "u-1"}, json=update)
    assert u1.status_code == u2.status_code == 200 and u1.content == u2.content
    state = listed(http)
    assert list(state) == [cid] and state[cid]["num_samples"] == 3 and state[cid]["updated_number"] == 1
    assert usage(http) == (charged[0] + u1.json()["usage"]["total_tokens"], charged[1] + 1)  # replays are free


def test_the_same_key_with_another_body_is_refused_and_changes_nothing(http):
    first = http.post("/v1/train", headers={"Idempotency-Key": "k-123"}, json={"model": MODEL, "input": FIRST})
    assert first.status_code == 200, first.text
    cid = first.json()["classifier_id"]
    assert http.post("/v1/train", headers={"Idempotency-Key": "u-9"}, json={"classifier_id": cid, "input": MORE}).status_code == 200
    probe = {"classifier_id": cid, "input": ["Will it rain on Sunday?", "Shares tumbled on the news."]}
    before, scores = listed(http), http.post("/v1/classify", json=probe).json()["data"]
    charged = usage(http)
    for key, body in [
        ("k-123", {"model": MODEL, "input": OTHER}),  # the case: a create retried with another body
        ("k-123", {"classifier_id": cid, "input": OTHER}),  # the create's key on an update
        ("u-9", {"classifier_id": cid, "input": OTHER}),  # an update's key with another update body
        ("u-9", {"classifier_id": cid, "input": MORE, "num_iters": 3}),  # the same examples, weighed differently
    ]:
        r = http.post("/v1/train", headers={"Idempotency-Key": key}, json=body)
        assert is_refusal(r, 422, "INPUT_IDEMPOTENCY_KEY_REUSED"), r.text
        assert "Idempotency-Key" in r.json()["detail"] and "nothing was applied" in r.json()["detail"]
    after = listed(http)
    assert list(after) == [cid]  # no second classifier
    for field in ("num_samples", "labels", "updated_number", "updated_at"):
        assert after[cid][field] == before[cid][field], field
    assert after[cid]["labels"] == ["weather", "animals"] and after[cid]["num_samples"] == 3
    assert usage(http) == charged  # refused requests are not charged
    assert http.post("/v1/classify", json=probe).json()["data"] == scores  # predictions unchanged
    again = http.post("/v1/train", headers={"Idempotency-Key": "k-123"}, json={"model": MODEL, "input": FIRST})
    assert again.status_code == 200 and again.content == first.content  # the first request's replay still works


def test_two_concurrent_requests_with_one_key_apply_once(http, serve_url):
    import httpx

    def race(body, key, n=6):
        barrier, out = threading.Barrier(n), [None] * n

        def one(i):
            with httpx.Client(base_url=serve_url, timeout=120) as c:
                barrier.wait()
                out[i] = c.post("/v1/train", headers={"Idempotency-Key": key}, json=body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return out

    spec = load_spec()
    created = race({"model": MODEL, "input": FIRST}, "race-create")
    assert {r.status_code for r in created} <= {200, 409}, [r.text for r in created]
    ok = [r for r in created if r.status_code == 200]
    assert ok and len({r.content for r in ok}) == 1  # every 200 is the one create's answer
    for r in created:
        if r.status_code == 409:
            assert is_refusal(r, 409, "CONFLICT_RESOURCE_BUSY") and r.headers["retry-after"] == "1"
            check(spec, r, "/v1/train")  # Jina's own 409 body and code
    (cid,) = listed(http)
    assert cid == ok[0].json()["classifier_id"]
    updated = race({"classifier_id": cid, "input": MORE}, "race-update")
    assert {r.status_code for r in updated} <= {200, 409}, [r.text for r in updated]
    ok = [r for r in updated if r.status_code == 200]
    assert ok and len({r.content for r in ok}) == 1
    state = listed(http)[cid]
    assert state["num_samples"] == 3 and state["updated_number"] == 1  # applied exactly once
    conflicts = sum(r.status_code == 409 for r in created + updated)
    print(f"\n[idempotency race] {conflicts} of {len(created) + len(updated)} answered 409, the rest the replay")


def test_the_same_x_request_id_with_two_bodies_applies_both(http):
    a = http.post("/v1/train", headers={"X-Request-ID": "trace-1"}, json={"model": MODEL, "input": FIRST})
    b = http.post("/v1/train", headers={"X-Request-ID": "trace-1"}, json={"model": MODEL, "input": OTHER})
    assert a.status_code == b.status_code == 200, (a.text, b.text)
    assert a.headers["x-request-id"] == b.headers["x-request-id"] == "trace-1"  # still echoed, for tracing
    assert a.json()["classifier_id"] != b.json()["classifier_id"]
    cid = a.json()["classifier_id"]
    for body in ({"classifier_id": cid, "input": MORE}, {"classifier_id": cid, "input": OTHER}):
        assert http.post("/v1/train", headers={"X-Request-ID": "trace-2"}, json=body).status_code == 200
    state = listed(http)
    assert state[cid]["num_samples"] == 2 + 1 + 2 and state[cid]["labels"] == ["weather", "animals", "finance", "sports"]
    assert state[b.json()["classifier_id"]]["labels"] == ["finance", "sports"]


def test_keys_survive_a_restart_of_the_state_shards(http):
    first = http.post("/v1/train", headers={"Idempotency-Key": "k-durable"}, json={"model": MODEL, "input": FIRST})
    assert first.status_code == 200, first.text
    cid = first.json()["classifier_id"]
    update = {"classifier_id": cid, "input": MORE}
    u1 = http.post("/v1/train", headers={"Idempotency-Key": "u-durable"}, json=update)
    assert u1.status_code == 200
    for name in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                 if a["namespace"] == "ray-classifier" and a["name"].startswith("classifier-shard-")]:
        ray.kill(ray.get_actor(name, namespace="ray-classifier"), no_restart=True)  # all memory gone
    r = http.post("/v1/train", headers={"Idempotency-Key": "u-durable"}, json={"classifier_id": cid, "input": OTHER})
    assert is_refusal(r, 422, "INPUT_IDEMPOTENCY_KEY_REUSED"), r.text
    assert http.post("/v1/train", headers={"Idempotency-Key": "u-durable"}, json=update).content == u1.content
    assert http.post("/v1/train", headers={"Idempotency-Key": "k-durable"}, json={"model": MODEL, "input": FIRST}).content == first.content
    assert listed(http)[cid]["num_samples"] == 3


def test_handle_callers_get_the_same_semantics(http, app_config):
    handle = serve.get_app_handle(app_config.app_name)
    body = TrainRequest(model=MODEL, input=FIRST)
    first = handle.train.remote(body, idempotency_key="h-1").result(timeout_s=120)
    again = handle.train.remote(body, idempotency_key="h-1").result(timeout_s=120)
    assert again.model_dump() == first.model_dump()
    with pytest.raises(IdempotencyKeyReused):
        handle.train.remote(TrainRequest(model=MODEL, input=OTHER), idempotency_key="h-1").result(timeout_s=120)
    # one operation whichever way it arrives: the same account's HTTP retry of it is the replay too
    r = http.post("/v1/train", headers={"Idempotency-Key": "h-1"}, json={"model": MODEL, "input": FIRST})
    assert r.status_code == 200 and r.json() == first.model_dump()
    assert [c["num_samples"] for c in listed(http).values()] == [2]
