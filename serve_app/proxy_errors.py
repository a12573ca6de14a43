"""Jina error bodies for the errors Ray Serve's HTTP proxy makes itself (not the ingress's own answers).

When the ingress replica holding a request dies, Ray's proxy ends the request without a response and its
server answers a plain-text ``500 Internal Server Error``; its own back-pressure and unavailability answers
(503) are plain text too. A Jina client then cannot read ``code``, ``detail`` or ``request_id``. This ASGI
middleware runs inside Ray's proxy (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set by
:func:`proxy_env`) and turns exactly those into Jina bodies; responses the ingress wrote pass untouched.

It imports neither Ray nor the service: the proxy process loads it on its own.
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Awaitable, Callable

from starlette.middleware import Middleware

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict, Receive, Send], Awaitable[None]]

CALLBACK = "serve_app.proxy_errors.proxy_middlewares"
REPLICA_LOST = (
    "the replica handling this request stopped before it answered; the request may have been applied. "
    "Retry it (a /train with the same Idempotency-Key is applied once)."
)
# The proxy's own answers and their Jina codes (any other 5xx it makes: INTERNAL_ERROR). 404: a path no app serves.
_CODES = {404: "RESOURCE_NOT_FOUND", 408: "SERVICE_TIMEOUT", 429: "RATE_REQUEST_LIMIT_EXCEEDED",
          503: "SERVICE_UNAVAILABLE", 504: "SERVICE_TIMEOUT"}


def proxy_env() -> dict[str, str]:
    """The environment that makes Ray's proxy load this middleware (read when the proxy process starts)."""
    return {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": CALLBACK}


def proxy_middlewares() -> list[Middleware]:
    """The callback Ray's proxy calls at start for the middlewares it wraps its ASGI app in."""
    return [Middleware(JinaErrorBodies)]


def _request_id(scope: dict) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == b"x-request-id":
            return value.decode("latin-1")
    return uuid.uuid4().hex


def error_response(status: int, code: str, detail: str, request_id: str, headers: list | None = None) -> list[Message]:
    body = json.dumps({"code": code, "detail": detail, "request_id": request_id}).encode()
    out_headers = [(k, v) for k, v in (headers or []) if k.lower() not in (b"content-type", b"content-length")]
    out_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if not any(k.lower() == b"x-request-id" for k, _ in out_headers):
        out_headers.append((b"x-request-id", request_id.encode()))
    return [{"type": "http.response.start", "status": status, "headers": out_headers},
            {"type": "http.response.body", "body": body}]


class JinaErrorBodies:
    """Rewrites the proxy's own plain-text errors (and a request that ended with no response) as Jina bodies."""

    def __init__(self, app: App):
        self.app = app

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        held: Message | None = None  # the start of a plain-text error, kept until its body is read
        held_body = b""

        async def rewrite(message: Message) -> None:
            nonlocal started, held, held_body
            if message["type"] == "http.response.start":
                started = True
                status = message["status"]
                if (status in _CODES or status >= 500) and _is_plain_text(message.get("headers", [])):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                held_body += message.get("body", b"")
                if message.get("more_body", False):
                    return
                status = held["status"]
                detail = held_body.decode("utf-8", "replace").strip() or "the service could not answer"
                for m in error_response(status, _CODES.get(status, "INTERNAL_ERROR"), detail, _request_id(scope),
                                        held.get("headers", [])):
                    await send(m)
                held = None
                return
            await send(message)

        await self.app(scope, receive, rewrite)
        if not started:  # the proxy gave up on the request (its replica died) without answering
            for m in error_response(503, "SERVICE_UNAVAILABLE", REPLICA_LOST, _request_id(scope)):
                await send(m)


def _is_plain_text(headers: list) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return not value.lower().startswith(b"application/json")
    return True
