"""Client over real HTTP (a scripted server on 127.0.0.1, see conftest.py): the request each method sends (method,
path, headers, body), typed results, retries after a real Retry-After, and the errors of answers that are not ours."""
from __future__ import annotations

import pytest

from classifier_client import ApiError, Client
from classifiers.protocol.wire import ClassificationResponse, UsageReport

RESULT = {"data": [{"index": 0, "prediction": "weather", "score": 0.9,
                    "predictions": [{"label": "weather", "score": 0.9}, {"label": "sport", "score": 0.1}]}],
          "usage": {"total_tokens": 7}}
TRAINED = {"classifier_id": "c1", "num_samples": 2, "usage": {"total_tokens": 4}}


def test_classify_sends_jinas_body_with_the_key_and_parses_the_answer(server):
    server.answer((200, RESULT))
    with Client(server.url, api_key="rck_test") as c:
        r = c.classify(["Will it rain?"], labels=["weather", "sport"], model="m")
    assert isinstance(r, ClassificationResponse) and r.data[0].prediction == "weather" and r.usage.total_tokens == 7
    (seen,) = server.seen
    assert (seen.method, seen.path) == ("POST", "/v1/classify")
    assert seen.body == {"model": "m", "input": ["Will it rain?"], "labels": ["weather", "sport"]}
    assert seen.headers["authorization"] == "Bearer rck_test"
    assert seen.headers["user-agent"].startswith("ray-classifier-client/")


def test_a_503_is_retried_after_its_retry_after_and_a_train_resends_its_key(server):
    server.answer((503, {"code": "SERVICE_UNAVAILABLE", "detail": "busy", "request_id": "r1"}, {"Retry-After": "0"}),
                  (409, {"code": "CONFLICT_RESOURCE_BUSY", "detail": "running", "request_id": "r2"}, {"Retry-After": "0"}),
                  (200, TRAINED))
    with Client(server.url, api_key="", backoff=0.0) as c:
        t = c.train([("Rain", "weather"), ("Goal", "sport")], model="m")
    assert t.classifier_id == "c1" and t.num_samples == 2
    keys = [s.headers["idempotency-key"] for s in server.seen]
    assert len(keys) == 3 and len(set(keys)) == 1 and "authorization" not in server.seen[0].headers


def test_a_retry_after_over_the_limit_is_raised_at_once(server):
    server.answer((429, {"code": "RATE_REQUEST_LIMIT_EXCEEDED", "detail": "slow down", "request_id": "r"},
                   {"Retry-After": "120"}))
    with Client(server.url, api_key="", max_retry_wait=30) as c, pytest.raises(ApiError) as err:
        c.classify("x", labels=["a", "b"], model="m")
    assert (err.value.status, err.value.code, err.value.retry_after, len(server.seen)) == (
        429, "RATE_REQUEST_LIMIT_EXCEEDED", 120.0, 1)


def test_answers_that_are_not_ours_become_api_errors(server):
    server.answer((502, "<html><body>Bad gateway</body></html>", {"X-Request-ID": "p1"}))
    with Client(server.url, api_key="", max_retries=0) as c:
        with pytest.raises(ApiError) as err:
            c.list()
        assert (err.value.code, err.value.request_id) == ("HTTP_502", "p1") and "Bad gateway" in err.value.detail
        server.answer((200, "<html>not json</html>"))
        with pytest.raises(ApiError) as err:
            c.list()
        assert err.value.code == "INVALID_RESPONSE"
        server.answer((200, {"unexpected": True}))
        with pytest.raises(ApiError) as err:
            c.usage()
        assert err.value.code == "INVALID_RESPONSE" and err.value.body == {"unexpected": True}


def test_usage_models_delete_and_raw_requests(server):
    usage = {"key_id": "k", "account_id": "a", "tokens": 5, "requests": 1,
             "by_mode": {"zeroshot": {"tokens": 5, "requests": 1}}, "balance": None, "balance_left": None}
    with Client(server.url, api_key="") as c:
        server.answer((200, usage))
        u = c.usage()
        assert isinstance(u, UsageReport) and u.by_mode["zeroshot"].tokens == 5
        server.answer((200, {"data": []}))
        assert c.models().data == [] and server.seen[0].path == "/v1/models"
        server.answer((200, {"deleted": True}))
        assert c.delete("c 1").classifier_id == "c 1" and server.seen[0].path == "/v1/classifiers/c%201"
        server.answer((200, {"embedders": {}}))
        assert c.request("get", "/v1/stats") == {"embedders": {}} and c.last_response is not None
