"""The edge of Ray Serve's Python HTTP proxy: header limits, slow bodies, and Jina bodies for the proxy's own errors.

This ASGI middleware runs inside Ray's proxy (``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH``, set by
:func:`proxy_env`), in front of every request, before Ray hands it to an ingress replica. HAProxy, when it is in
front instead (``serve_app.switches``), does the same jobs with ``serve_app.haproxy_override``; the limits and
codes are shared, so a client sees the same answers behind either proxy.

* **Header limits.** Ray's proxy serves HTTP with uvicorn on httptools, which has no limit of its own on a
  request's head. A URI over 8 KiB is answered 414, headers over 16 KiB or 100 fields 431, both
  ``INPUT_TOO_LARGE`` in Jina's body (HAProxy's limits, ``haproxy_override``). uvicorn has read the head by then
  (its memory is spent); what the limit saves is the replica's work on it. A request httptools cannot parse gets
  uvicorn's own ``400 Invalid HTTP request received.`` in plain text before any middleware runs; that page remains
  (docs/deploy.md), as does the absence of a timeout on a head that never completes (it holds a socket of the
  proxy, never a replica).
* **Slow bodies.** Ray's proxy passes a request to a replica at once and streams its body there as it arrives, so
  a client that sends headers and a few body bytes, then nothing, holds a slot of an ingress replica (issue 32:
  270 such connections from one key froze every tenant). Here the body's first ``PREBUFFER_BYTES`` (the whole
  body, for nearly every request) must arrive before Ray sees the request, and the body as a whole at
  ``MIN_BODY_RATE`` after a grace of ``REQUEST_TIMEOUT_S``: by ``t`` seconds after the headers, at least
  ``(t - 10 s) x 64 KiB`` must have arrived. A body that falls behind is answered 408 ``INPUT_REQUEST_TIMEOUT``
  (the ingress's code for its own body deadline) in Jina's body; if Ray already sent it on, Ray's proxy is told
  the client left, so it cancels the replica's work. The allowance grows with the bytes that arrived, not with the
  ``Content-Length`` a client declares, so declaring a huge body buys no time here.
* **The proxy's own errors.** When the ingress replica holding a request dies, Ray's proxy ends the request
  without a response and its server answers a plain-text ``500 Internal Server Error``; its back-pressure and
  unavailability answers (503) are plain text too. Those become Jina bodies; responses the ingress wrote pass
  untouched.

It imports neither Ray nor the service (only the shared limits): the proxy process loads it on its own.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any, Awaitable, Callable

from starlette.middleware import Middleware

from serve_app.haproxy_override import (
    HEADERS_DETAIL,
    MAX_HEADER_BYTES,
    MAX_HEADERS,
    MAX_URI_BYTES,
    REQUEST_TIMEOUT_S,
    TIMEOUT_CODE,
    URI_DETAIL,
)

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[dict, Receive, Send], Awaitable[None]]

CALLBACK = "serve_app.proxy_errors.proxy_middlewares"
REPLICA_LOST = (
    "the replica handling this request stopped before it answered; the request may have been applied. "
    "Retry it (a /train with the same Idempotency-Key is applied once)."
)
PREBUFFER_BYTES = 64 * 1024  # read before Ray sees the request: the whole body of nearly every request
MIN_BODY_RATE = 64 * 1024  # bytes/s a body must average after the grace (a 32 MiB body: 10 s + 512 s allowed)
BODY_TIMEOUT_DETAIL = (
    f"The request body did not arrive in time: it must start within {REQUEST_TIMEOUT_S} s and then arrive at "
    f"{MIN_BODY_RATE // 1024} KiB/s or faster."
)
# The proxy's own answers and their Jina codes (any other 5xx it makes: INTERNAL_ERROR). 404: a path no app serves.
# Its 408 is Ray's request_timeout_s running out (the service's time), not a slow client.
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


def error_response(status: int, code: str, detail: str, request_id: str, headers: list | None = None,
                   *, close: bool = False) -> list[Message]:
    body = json.dumps({"code": code, "detail": detail, "request_id": request_id}).encode()
    out_headers = [(k, v) for k, v in (headers or []) if k.lower() not in (b"content-type", b"content-length")]
    out_headers += [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if not any(k.lower() == b"x-request-id" for k, _ in out_headers):
        out_headers.append((b"x-request-id", request_id.encode()))
    if close:  # the rest of the request was never read: the connection cannot carry another one
        out_headers.append((b"connection", b"close"))
    return [{"type": "http.response.start", "status": status, "headers": out_headers},
            {"type": "http.response.body", "body": body}]


def head_refusal(scope: dict) -> tuple[int, str] | None:
    """(status, detail) for a request whose URI or headers are over the limits, else None."""
    query = scope.get("query_string", b"")
    uri = len(scope.get("raw_path") or scope.get("path", "").encode()) + (len(query) + 1 if query else 0)
    if uri > MAX_URI_BYTES:
        return 414, URI_DETAIL
    headers = scope.get("headers", [])
    if len(headers) > MAX_HEADERS or sum(len(k) + len(v) + 4 for k, v in headers) > MAX_HEADER_BYTES:
        return 431, HEADERS_DETAIL
    return None


class BodyClock:
    """A request's ``receive``, timed: :meth:`prebuffer` reads the body's start before the app runs, then
    :meth:`receive` replays it and goes on under the rate deadline. A body that misses it reads as the client
    leaving (``http.disconnect``, so Ray's proxy cancels the request) and sets ``timed_out``."""

    def __init__(self, receive: Receive, *, grace_s: float = REQUEST_TIMEOUT_S, min_rate: float = MIN_BODY_RATE,
                 prebuffer_bytes: int = PREBUFFER_BYTES):
        self._receive, self._grace_s, self._min_rate, self._prebuffer_bytes = receive, grace_s, min_rate, prebuffer_bytes
        self._start = time.monotonic()
        self._held: list[Message] = []
        self.received = 0
        self.complete = False  # the whole body has arrived
        self.gone = False  # the client disconnected
        self.timed_out = False

    def _seconds_left(self) -> float:
        return self._start + self._grace_s + self.received / self._min_rate - time.monotonic()

    async def _next(self) -> Message:
        if self.complete or self.gone or self.timed_out:  # after the body: Ray's proxy waits for a disconnect
            return await self._receive()
        try:
            message = await _within(self._receive(), max(self._seconds_left(), 0.0))
        except asyncio.TimeoutError:
            self.timed_out = True
            return {"type": "http.disconnect"}
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            self.complete = not message.get("more_body", False)
        elif message["type"] == "http.disconnect":
            self.gone = True
        return message

    async def prebuffer(self) -> None:
        """Read until the body is complete, ``prebuffer_bytes`` have arrived, the client left, or time ran out."""
        while not (self.complete or self.gone or self.timed_out) and self.received < self._prebuffer_bytes:
            message = await self._next()
            if not self.timed_out:
                self._held.append(message)

    async def receive(self) -> Message:
        if self._held:
            return self._held.pop(0)
        return await self._next()


class JinaErrorBodies:
    """The proxy's edge (see the module docstring): refuses over-limit heads and late bodies, and rewrites the
    proxy's own plain-text errors (and a request that ended with no response) as Jina bodies."""

    def __init__(self, app: App, *, body_grace_s: float = REQUEST_TIMEOUT_S, min_body_rate: float = MIN_BODY_RATE,
                 prebuffer_bytes: int = PREBUFFER_BYTES):
        self.app = app
        self.body_grace_s, self.min_body_rate, self.prebuffer_bytes = body_grace_s, min_body_rate, prebuffer_bytes

    async def __call__(self, scope: dict, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = head_refusal(scope)
        if refused is not None:
            status, detail = refused
            await _send_all(send, error_response(status, "INPUT_TOO_LARGE", detail, _request_id(scope), close=True))
            return
        body = BodyClock(receive, grace_s=self.body_grace_s, min_rate=self.min_body_rate,
                         prebuffer_bytes=self.prebuffer_bytes)
        await body.prebuffer()
        if body.gone:
            return  # the client left before its body arrived: nothing to answer, and no replica ever saw it
        if not body.timed_out and await self._run(scope, body.receive, send):
            return
        if body.timed_out:
            await _send_all(send, error_response(408, TIMEOUT_CODE, BODY_TIMEOUT_DETAIL, _request_id(scope), close=True))
        else:  # the proxy gave up on the request (its replica died) without answering
            await _send_all(send, error_response(503, "SERVICE_UNAVAILABLE", REPLICA_LOST, _request_id(scope)))

    async def _run(self, scope: dict, receive: Receive, send: Send) -> bool:
        """Run Ray's proxy with its plain-text errors rewritten; True if it started a response."""
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
                await _send_all(send, error_response(status, _CODES.get(status, "INTERNAL_ERROR"), detail,
                                                     _request_id(scope), held.get("headers", [])))
                held = None
                return
            await send(message)

        await self.app(scope, receive, rewrite)
        return started


async def _within(awaitable: Awaitable[Message], seconds: float) -> Message:
    """``awaitable`` under a deadline (asyncio.TimeoutError past it); on 3.11+ without wait_for's task per call:
    29 us of the proxy's time per request instead of 175 us (a one-message body, measured in-process)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


async def _send_all(send: Send, messages: list[Message]) -> None:
    for message in messages:
        await send(message)


def _is_plain_text(headers: list) -> bool:
    for key, value in headers:
        if key.lower() == b"content-type":
            return not value.lower().startswith(b"application/json")
    return True
