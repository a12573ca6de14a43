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


class RecordingMetrics:
    def __init__(self):
        self.calls = []

    def http(self, route, method, status, model, latency_ms):
        self.calls.append((route, method, status, model))
        assert latency_ms >= 0


def test_the_guard_adds_the_routes_rate_headers_and_counts_every_answer():
    """The outermost middleware (a plain ASGI one): the rate-limit headers a route leaves in request.state replace
    any of the same name in its answer, a failure's included; every answer is counted with its route template, its
    status and the model the route named."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    metrics = RecordingMetrics()
    api = make_api(max_request_bytes=100, metrics=metrics)

    @api.post("/v1/items/{item}")
    async def item(item: str, request: Request):
        request.state.rate_headers = {"X-RateLimit-Remaining-Requests": "7"}
        request.state.model = "m"
        if item == "typed":
            raise InvalidLabels("duplicate labels")
        if item == "boom":
            raise RuntimeError("crashed")
        return JSONResponse({"item": item}, headers={"X-RateLimit-Remaining-Requests": "stale"})

    client = TestClient(api, raise_server_exceptions=False)
    ok, typed, boom = (client.post(f"/v1/items/{i}", json={}) for i in ("a", "typed", "boom"))
    assert ok.status_code == 200 and ok.json() == {"item": "a"}
    assert [r.headers.get_list("x-ratelimit-remaining-requests") for r in (ok, typed, boom)] == [["7"]] * 3
    assert typed.status_code == 400 and boom.status_code == 500 and boom.json()["code"] == "INTERNAL_ERROR"
    assert client.post("/v1/items/a", content=b"x" * 101).status_code == 413  # before the route: not counted
    assert client.get("/nowhere").status_code == 404
    assert metrics.calls == [("/v1/items/{item}", "POST", s, "m") for s in (200, 400, 500)] + [
        ("unmatched", "GET", 404, "")
    ]


def _post_slowly(api, *, stall_s: float, headers: dict | None = None):
    """POST a body whose first half arrives at once and whose rest comes after ``stall_s`` (or never: None)."""
    import asyncio

    import httpx

    async def run():
        async def body():
            yield b'{"a": ' + b" " * 50
            await asyncio.sleep(stall_s)
            yield b"1}"

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as c:
            return await c.post("/echo", content=body(), headers={"content-type": "application/json", **(headers or {})})

    return asyncio.run(run())


def test_a_body_that_does_not_arrive_in_time_gets_a_408_in_jinas_body():
    api = make_api(max_request_bytes=10_000, body_timeout_s=0.2, min_body_rate=10**9)

    @api.post("/echo")
    async def echo(body: dict):
        return body

    late = _post_slowly(api, stall_s=1.0)
    assert late.status_code == 408 and late.json()["code"] == "INPUT_REQUEST_TIMEOUT" and late.json()["request_id"]
    assert _post_slowly(api, stall_s=0.01).json() == {"a": 1}  # within the deadline: answered


def test_a_half_sent_body_holds_its_clients_place_so_one_key_cannot_take_the_replica(tmp_path):
    """Places are taken when the headers name the caller, before the body: key A's two bodies still arriving fill
    A's two places (its third request: 429 at once), while key B is served; once A's bodies time out, A's places
    are free again."""
    import asyncio

    import httpx

    from deployments.metrics import IngressMetrics
    from serve_app.admission import InflightLimits
    from tests.accounts_fixture import make_gate

    gate, store, _ = make_gate(tmp_path)
    a, b = ({"Authorization": f"Bearer {store.create_key(n)[1]}"} for n in "ab")
    places = InflightLimits(IngressMetrics(), max_inflight=100, max_inflight_per_client=2)
    api = make_api(max_request_bytes=10_000, gate=gate, places=places, body_timeout_s=0.5, min_body_rate=10**9)

    @api.post("/v1/echo")
    async def echo(body: dict):
        return body

    async def run():
        async def stalled():
            yield b'{"a": '
            await asyncio.sleep(5)

        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api), base_url="http://test") as c:
            def post(headers, content):
                return c.post("/v1/echo", content=content, headers={"content-type": "application/json", **headers})

            held = [asyncio.ensure_future(post(a, stalled())) for _ in range(2)]
            await asyncio.sleep(0.1)
            third, other = await post(a, b'{"x": 1}'), await post(b, b'{"x": 2}')
            inflight = places.inflight
            timed_out = await asyncio.gather(*held)
            after = await post(a, b'{"x": 3}')
        return third, other, inflight, timed_out, after

    third, other, inflight, timed_out, after = asyncio.run(run())
    assert third.status_code == 429 and third.json()["code"] == "RATE_REQUEST_LIMIT_EXCEEDED"
    assert other.status_code == 200 and inflight == 2
    assert [r.status_code for r in timed_out] == [408, 408]
    assert after.status_code == 200 and places.inflight == 0


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999", 'NaN, "x": "\\ud800"'])
def test_nan_and_infinity_are_not_json(constant):
    """The routes read their bodies with read_body (orjson, and the standard parser for lone surrogate escapes):
    neither takes a number that is not a finite JSON number."""
    from fastapi import Request

    from classifiers.protocol.wire import Abstain
    from serve_app.http_api import read_body

    api = make_api()

    @api.post("/echo")
    async def echo(request: Request):
        class Body(Abstain):
            pass

        return {"abstain": (await read_body(request, Body)).model_dump(exclude_none=True)}

    strict = TestClient(api)
    r = strict.post("/echo", content=f'{{"threshold": {constant}}}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["code"] == "INPUT_INVALID_JSON" and r.json()["request_id"]
    assert strict.post("/echo", json={"threshold": 0.5}).json() == {"abstain": {"threshold": 0.5}}
    lone = strict.post("/echo", content=b'{"threshold": 0.5, "x": "\\ud800"}', headers={"content-type": "application/json"})
    assert lone.status_code == 422  # a lone surrogate escape is JSON (RFC 8259); Abstain forbids the extra field


def test_trailing_slash_redirects_are_relative_whatever_the_host_header():
    api = make_api()

    @api.get("/docs-like")
    async def page():
        return {"ok": True}

    c = TestClient(api)
    r = c.get("/docs-like/?x=1", headers={"Host": "evil.example"}, follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/docs-like?x=1"
    assert c.get("/missing/", follow_redirects=False).status_code == 404  # no route: no redirect
    assert c.get("/docs-like/").json() == {"ok": True}
