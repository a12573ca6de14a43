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
