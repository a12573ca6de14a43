"""The middleware Ray's proxy runs (serve_app.proxy_errors): its own plain-text errors, and a request it ended
without any answer (its replica died), reach clients as Jina error bodies; the ingress's answers pass untouched."""
from __future__ import annotations

import asyncio
import json

from serve_app.proxy_errors import REPLICA_LOST, JinaErrorBodies, proxy_middlewares

SCOPE = {"type": "http", "method": "POST", "path": "/v1/classify", "headers": [(b"x-request-id", b"rid-1")]}


def serve(app) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(JinaErrorBodies(app)(dict(SCOPE), receive, send))
    return sent


def answered(sent: list[dict]) -> tuple[int, dict, dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {k.decode(): v.decode() for k, v in start["headers"]}, json.loads(body)


def plain(status: int, text: bytes, *, chunks: int = 1):
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
        step = max(1, len(text) // chunks)
        parts = [text[i:i + step] for i in range(0, len(text), step)]
        for i, part in enumerate(parts):
            await send({"type": "http.response.body", "body": part, "more_body": i < len(parts) - 1})
    return app


def test_a_request_ended_without_an_answer_gets_a_503_jina_body():
    async def dead_replica(scope, receive, send):
        return None  # what Ray's proxy does when the ingress replica holding the request dies

    status, headers, body = answered(serve(dead_replica))
    assert status == 503 and headers["content-type"] == "application/json" and headers["x-request-id"] == "rid-1"
    assert body == {"code": "SERVICE_UNAVAILABLE", "detail": REPLICA_LOST, "request_id": "rid-1"}


def test_the_proxys_plain_errors_become_jina_bodies_with_their_text_as_detail():
    status, headers, body = answered(serve(plain(503, b"Deployment 'Ingress' is unavailable.", chunks=3)))
    assert status == 503 and body["code"] == "SERVICE_UNAVAILABLE" and body["request_id"] == "rid-1"
    assert body["detail"] == "Deployment 'Ingress' is unavailable."
    assert int(headers["content-length"]) == len(json.dumps(body).encode())
    assert answered(serve(plain(500, b"Internal Server Error")))[2]["code"] == "INTERNAL_ERROR"
    assert answered(serve(plain(404, b"Path '/nope' not found.")))[2]["code"] == "RESOURCE_NOT_FOUND"


def test_the_ingress_answers_pass_untouched():
    ours = json.dumps({"code": "INPUT_INVALID", "detail": "x", "request_id": "rid-1"}).encode()

    async def ingress(scope, receive, send):
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": ours})

    sent = serve(ingress)
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"] and sent[1]["body"] == ours
    ok = serve(plain(200, b"fine"))  # a plain-text success (e.g. /metrics) is not an error
    assert ok[0]["status"] == 200 and ok[1]["body"] == b"fine"
    assert [m.cls for m in proxy_middlewares()] == [JinaErrorBodies]


# The edge of Ray's proxy: header limits, and bodies that must arrive in time (the same limits HAProxy applies).
FAST = {"body_grace_s": 0.3, "min_body_rate": 10_000, "prebuffer_bytes": 1000}  # the production clock, scaled down


def scripted(steps: list[tuple[float, dict | None]]):
    """A client: each step waits its delay, then delivers its message; None means it never sends anything again."""
    steps = list(steps)

    async def receive():
        delay, message = steps.pop(0) if steps else (0.0, None)
        await asyncio.sleep(delay)
        if message is None:
            await asyncio.Event().wait()  # cancelled by the middleware's deadline, or the test hangs (timeout)
        return message

    return receive


def chunk(n: int, more: bool = True) -> dict:
    return {"type": "http.request", "body": b"x" * n, "more_body": more}


def edge(app, steps, scope: dict | None = None, **clock) -> list[dict]:
    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(asyncio.wait_for(JinaErrorBodies(app, **{**FAST, **clock})(scope or dict(SCOPE), scripted(steps), send), 30))
    return sent


def recording(seen: list):
    """Stands where Ray's proxy is: reads the body until it ends or the client leaves; answers 200 if it ended."""
    async def app(scope, receive, send):
        while True:
            message = await receive()
            seen.append(message)
            if message["type"] == "http.disconnect":
                return  # Ray's proxy cancels the replica's request and answers nothing
            if not message.get("more_body", False):
                break
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b"{}"})
    return app


def test_oversized_heads_are_refused_before_ray_sees_them():
    seen: list = []
    cases = {431: [(b"authorization", b"Bearer " + b"a" * 17_000)], 414: []}
    status, headers, body = answered(edge(recording(seen), [], {**SCOPE, "headers": cases[431]}))
    assert (status, body["code"], headers["connection"]) == (431, "INPUT_TOO_LARGE", "close")
    many = [(f"x-pad-{i}".encode(), b"p") for i in range(200)]
    assert answered(edge(recording(seen), [], {**SCOPE, "headers": many}))[0] == 431
    long_path = {**SCOPE, "path": "/v1/classifiers/" + "c" * 20_000, "raw_path": b"/v1/classifiers/" + b"c" * 20_000}
    status, _, body = answered(edge(recording(seen), [], long_path))
    assert status == 414 and body == {"code": "INPUT_TOO_LARGE", "detail": body["detail"], "request_id": "rid-1"}
    assert seen == []  # Ray's proxy never saw them
    assert answered(edge(recording(seen), [(0, chunk(10, more=False))]))[0] == 200  # within the limits: passes


def test_a_half_sent_body_gets_a_408_and_ray_never_sees_it():
    seen: list = []
    status, headers, body = answered(edge(recording(seen), [(0, chunk(5)), (0, None)]))
    assert (status, body["code"], body["request_id"], headers["connection"]) == (408, "INPUT_REQUEST_TIMEOUT", "rid-1", "close")
    assert seen == []


def test_a_body_that_arrives_in_time_reaches_ray_whole_and_in_order():
    seen: list = []
    steps = [(0.05, chunk(400)), (0.05, chunk(400)), (0.05, chunk(400)), (0.05, chunk(7, more=False))]
    assert answered(edge(recording(seen), steps))[0] == 200
    assert [len(m["body"]) for m in seen] == [400, 400, 400, 7] and not seen[-1]["more_body"]
    seen.clear()  # a trickle well above the minimum rate, past the grace: 1000 B every 0.02 s = 50 KB/s
    assert answered(edge(recording(seen), [(0.02, chunk(1000))] * 30 + [(0, chunk(1, more=False))]))[0] == 200
    assert sum(len(m["body"]) for m in seen) == 30_001


def test_a_body_that_stalls_after_ray_has_it_is_cancelled_and_answered_408():
    seen: list = []  # past the prebuffer: Ray's proxy already streams it to a replica, then the client stops
    status, _, body = answered(edge(recording(seen), [(0, chunk(600)), (0, chunk(600)), (0, None)]))
    assert (status, body["code"]) == (408, "INPUT_REQUEST_TIMEOUT")
    assert [m["type"] for m in seen] == ["http.request", "http.request", "http.disconnect"]  # told the client left
    seen.clear()  # a trickle far below the minimum rate (1000 B/s against 10 000) falls behind after the grace
    status, _, _ = answered(edge(recording(seen), [(0, chunk(1000))] + [(0.1, chunk(100))] * 100))
    assert status == 408 and seen[-1]["type"] == "http.disconnect" and len(seen) < 40


def test_a_client_that_leaves_mid_body_gets_nothing_and_the_wait_after_the_body_has_no_deadline():
    seen: list = []
    assert edge(recording(seen), [(0, chunk(5)), (0, {"type": "http.disconnect"})]) == [] and seen == []

    async def waits_for_disconnect(scope, receive, send):  # Ray's proxy watches for a disconnect after the body
        assert (await receive())["body"] == b"x"
        assert (await receive())["type"] == "http.disconnect"  # arrives after the grace: not a timeout
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    sent = edge(waits_for_disconnect, [(0, chunk(1, more=False)), (0.6, {"type": "http.disconnect"})])
    assert sent[0]["status"] == 200
