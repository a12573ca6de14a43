"""The ingress error mapping on its own (no Ray): every failure leaves as Jina's body with the request id."""
import logging

import pytest
from fastapi.testclient import TestClient

from classifiers.protocol.errors import InvalidLabels
from serve_app.http_api import make_api


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


def test_bodies_in_flight_share_a_replica_budget():
    """Two uploads that each fit the per-request limit but not the replica's budget together: the second gets a
    quick 503 with Jina's body while the first is still arriving; once the first is done, the budget is free."""
    import asyncio

    import httpx

    api = make_api(max_request_bytes=1000, max_inflight_body_bytes=1200)

    from fastapi import Body

    @api.post("/echo")
    async def echo(body: list = Body(...)):
        return {"n": len(body)}

    async def run():
        first_sent, release = asyncio.Event(), asyncio.Event()

        async def slow_body():
            yield b"[" + b"1," * 300  # 601 bytes held by the replica...
            first_sent.set()
            await release.wait()  # ...while the rest has not arrived
            yield b"1]"

        async def chunks(*parts):
            for part in parts:
                yield part

        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            first = asyncio.ensure_future(c.post("/echo", content=slow_body(), headers={"content-type": "application/json"}))
            await first_sent.wait()
            second = await c.post("/echo", content=chunks(b"[" + b"2," * 300, b"2]"), headers={"content-type": "application/json"})
            release.set()
            first = await first
            third = await c.post("/echo", content=chunks(b"[" + b"3," * 300, b"3]"), headers={"content-type": "application/json"})
        return first, second, third

    first, second, third = asyncio.run(run())
    assert second.status_code == 503 and second.json()["code"] == "SERVICE_UNAVAILABLE" and second.json()["request_id"]
    assert first.status_code == 200 and first.json() == {"n": 301}
    assert third.status_code == 200  # the budget was given back
