"""The ingress error mapping on its own (no Ray): every failure leaves as Jina's body with the request id."""
import logging

import pytest
from fastapi.testclient import TestClient

from classifiers.errors import InvalidLabels
from serve_app.ingress import make_api


@pytest.fixture
def client():
    api = make_api(max_request_bytes=10)

    @api.get("/boom")
    async def boom():
        raise RuntimeError("the model crashed")

    @api.get("/typed")
    async def typed():
        raise InvalidLabels("duplicate labels: ['a']")

    @api.post("/echo")
    async def echo(body: dict):
        return body

    return TestClient(api, raise_server_exceptions=False)


def test_unexpected_error_is_a_500_whose_request_id_is_logged(client, caplog):
    with caplog.at_level(logging.ERROR, logger="ray.serve"):
        r = client.get("/boom", headers={"x-request-id": "req-42"})
    assert r.status_code == 500
    assert r.json() == {
        "code": "INTERNAL_ERROR",
        "detail": "An unexpected error occurred. If this persists, report request_id req-42.",
        "request_id": "req-42",
    }
    assert any("req-42" in rec.getMessage() and rec.exc_info for rec in caplog.records)


def test_typed_errors_keep_their_code_and_status(client):
    r = client.get("/typed")
    assert r.status_code == 400 and r.json()["code"] == "INPUT_INVALID_LABELS" and r.json()["request_id"]


def test_oversized_body_is_refused_before_reading(client):
    r = client.post("/typed", content=b"x" * 100)
    assert r.status_code == 413 and r.json()["code"] == "INPUT_TOO_LARGE"


def test_a_chunked_body_without_content_length_is_counted_while_read(client):
    def chunks():
        for _ in range(10):
            yield b"[1,2,3,4,5]"

    r = client.post("/echo", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and r.json()["code"] == "INPUT_TOO_LARGE" and r.json()["request_id"]
    small = client.post("/echo", content=iter([b'{"a"', b":1}"]), headers={"content-type": "application/json"})
    assert small.status_code == 200 and small.json() == {"a": 1}
