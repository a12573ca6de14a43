"""HTTP plumbing of the ingress: the FastAPI app factory, request ids, body limits, typed errors -> status codes.

:func:`make_api` builds one FastAPI app from explicit arguments (its body limits, the accounts gate that names the
caller before a body is read, the metrics it records): each Ingress replica builds its own at start
(``Ingress.__serve_build_asgi_app__``), so no app is shared or changed after it is built. Every failure leaves as
Jina's body ``{"code", "detail", "request_id"}`` (plus ``errors`` for schema failures): the core's typed errors
(``classifiers/protocol/errors.py``) keep their status and code, anything else is a 500 naming the request id.
The request id is decided once per request: the ``X-Request-ID`` header the proxy passes in (the client's, else
the one Ray Serve assigned), else a new one. It is for tracing only (echoed, logged), never a deduplication key.
"""

import asyncio
import json
import logging
import math
import time
import uuid
from typing import Callable, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware
from starlette.routing import Match

from classifiers.accounts.gate import AccountsGate
from classifiers.protocol.errors import (
    IdempotencyKeyInUse,
    RateLimited,
    RequestValidationFailed,
    ServiceError,
    ServiceUnavailable,
)
from classifiers.protocol.wire import ErrorResponse
from deployments.metrics import IngressMetrics
from serve_app.admission import InflightLimits, within

logger = logging.getLogger("ray.serve")
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_BODY_TIMEOUT_S = 10.0  # IngressConfig.body_timeout_s's default
DEFAULT_MIN_BODY_RATE = 256 * 1024  # IngressConfig.min_body_bytes_per_s's default


BODY_TIMEOUT = "INPUT_REQUEST_TIMEOUT"  # 408: the client did not send its body in time (ours; Jina has no 408)


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return rid


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


def rate_header_sink(request: Request | None) -> Callable[[dict[str, str]], None] | None:
    """Where a route leaves its rate-limit headers for the response (the guard adds them), or None for a handle call."""
    if request is None:
        return None

    def put(headers: dict[str, str]) -> None:
        request.state.rate_headers = headers

    return put


def placed_at_edge(request: Request | None) -> bool:
    """Whether the Guard took this HTTP request's place (InflightLimits) when its headers arrived."""
    return request is not None and getattr(request.state, "placed", False)


def error_response(request: Request, status: int, code: str, detail: str, *, headers=None, **extra) -> JSONResponse:
    rid = request_id_of(request)
    body = {"code": code, "detail": detail, "request_id": rid, **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("request %s failed: %s", request_id_of(request), exc.detail, exc_info=exc)
    extra = {"errors": exc.errors} if isinstance(exc, RequestValidationFailed) else {}
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif isinstance(exc, IdempotencyKeyInUse):
        headers = {"Retry-After": "1"}  # the first request with the key is being applied: about a second
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(request, exc.status, exc.code, exc.detail, headers=headers, **extra)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A replica or actor this request needed died or is overloaded: retryable, never a 500."""
    logger.warning("request %s: a backend was unavailable (%s)", request_id_of(request), type(exc).__name__)
    return await _service_error(request, ServiceUnavailable("A backend replica is unavailable or overloaded; retry shortly."))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 400, "INPUT_INVALID_JSON", "The request body is not valid JSON.")
    items = [
        {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors[:20]
    ]
    summary = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return error_response(request, 422, "INPUT_VALIDATION_FAILED", f"Invalid request: {summary}", errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # 400 here is only FastAPI failing to read the body (e.g. not UTF-8): the same as invalid JSON to a client.
    codes = {400: "INPUT_INVALID_JSON", 404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 408: BODY_TIMEOUT,
             413: "INPUT_TOO_LARGE", 503: "SERVICE_UNAVAILABLE"}
    details = {400: "The request body is not valid JSON (UTF-8).",
               413: f"Request body over {request.app.state.max_request_bytes} bytes."}
    detail = details.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), detail)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    logger.error("request %s failed with an internal error", rid, exc_info=exc)
    return error_response(
        request, 500, "INTERNAL_ERROR", f"An unexpected error occurred. If this persists, report request_id {rid}."
    )


class BodyLimit(RequestBodyLimitMiddleware):
    """Starlette's body limit, counted as the body arrives (a chunked upload without Content-Length is bounded
    too), at ``max_body_size``; a budget for all bodies in flight on this replica together
    (``max_inflight_bytes``): beyond it a request is refused with a retryable 503 while its body arrives, so
    concurrent large requests cannot exhaust the replica; and a deadline for the body: it must arrive within
    ``body_timeout_s`` plus one second per ``min_body_rate`` bytes that have arrived (the allowance grows only with
    bytes received, so declaring a huge Content-Length buys no time), else 408 and the connection is dropped. A
    half-sent body therefore holds its place (``InflightLimits``) for a bounded time."""

    def __init__(self, app, max_body_size: int, max_inflight_bytes: int, body_timeout_s: float, min_body_rate: int):
        super().__init__(app, max_body_size=max_body_size)
        self.max_inflight_bytes = max_inflight_bytes
        self.body_timeout_s = body_timeout_s
        self.min_body_rate = min_body_rate
        self.inflight_bytes = 0

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        budget, mine, complete = self.max_inflight_bytes, 0, False
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def counted():
            nonlocal mine, complete
            if complete:  # the body is in: what follows is the wait for a disconnect, which has no deadline
                return await receive()
            left = started + self.body_timeout_s + mine / self.min_body_rate - loop.time()
            try:
                message = await within(receive(), max(0.0, left))
            except asyncio.TimeoutError:
                raise StarletteHTTPException(408, "The request body did not arrive in time.") from None
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                if self.inflight_bytes + n > budget and mine + n <= self.max_body_size:
                    raise StarletteHTTPException(503, "Too many large requests in flight on this replica; retry shortly.")
                mine += n
                self.inflight_bytes += n
                complete = not message.get("more_body", False)
            return message

        try:
            await super().__call__(scope, counted, send)
        finally:
            self.inflight_bytes -= mine


def loads_strict(raw: bytes):
    """RFC 8259 JSON: ``NaN``, ``Infinity`` and numbers out of float range are not JSON (Python's parser takes them),
    so a client's ``"threshold": NaN`` can never silently turn a feature off. orjson parses (3-5x the standard
    parser's speed, nesting bounded at 1,024 levels); it also refuses lone surrogate escapes, which RFC 8259 allows
    and the inputs' cleaning replaces, so those bodies get the standard parser, as strict about numbers."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        try:
            return json.loads(raw, parse_constant=_not_json, parse_float=_finite)
        except (ValueError, RecursionError):
            raise exc from None


def _not_json(token: str):
    raise json.JSONDecodeError(f"{token} is not a JSON value (RFC 8259)", token, 0)


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise json.JSONDecodeError(f"{text} is out of range for a JSON number here", text, 0)
    return value


M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as ``model``, parsed once here instead of by FastAPI (whose per-route validation
    costs more): invalid JSON is a 400 INPUT_INVALID_JSON and a wrong shape a 422 INPUT_VALIDATION_FAILED with its
    ``errors``, exactly as FastAPI's own body errors (the same handler, ``_validation_error``)."""
    raw = await request.body()
    try:
        data = loads_strict(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestValidationError([{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error"}]) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False, include_context=False)]
        raise RequestValidationError(errors) from None


def json_body(answer: BaseModel, *, exclude_none: bool = False) -> Response:
    """An answer we built ourselves, serialised once by pydantic (no re-validation against the route's
    ``response_model``, which stays for the schema)."""
    return Response(answer.model_dump_json(exclude_none=exclude_none), media_type="application/json")


def request_body(model: type[BaseModel]) -> dict:
    """``openapi_extra`` declaring a route's JSON body (read by :func:`read_body`, so FastAPI does not see it)."""
    schema = {"$ref": f"{REF}{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


REF = "#/components/schemas/"


def with_body_schemas(api: FastAPI, models: list[type[BaseModel]]) -> None:
    """Put the request models :func:`request_body` names into the app's OpenAPI components (once, when the
    document is first built), so ``/openapi.json`` and ``/docs`` stay complete."""
    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema is None:
            doc = build()
            components = doc.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                schema = model.model_json_schema(ref_template=REF + "{model}")
                components.update(schema.pop("$defs", {}))
                components[model.__name__] = schema
            api.openapi_schema = doc
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customise the document


ERROR_STATUSES = {
    400: "Invalid input (INPUT_*), e.g. unknown model, bad labels, too many inputs, invalid JSON.",
    408: "The request body did not arrive in time (INPUT_REQUEST_TIMEOUT); the connection is closed.",
    401: "Keys required and missing, malformed or unknown (AUTH_*).",
    403: "Classifier limit, spent balance, or admin route without an admin key (AUTHZ_*).",
    404: "Unknown route, or a classifier that does not exist or is not the caller's (RESOURCE_NOT_FOUND).",
    413: "Body over the size limit (INPUT_TOO_LARGE).",
    409: "/train: a request with this Idempotency-Key is still being applied; retry shortly (CONFLICT_RESOURCE_BUSY).",
    422: "Wrong types or shape (INPUT_VALIDATION_FAILED, with `errors`); /train: the Idempotency-Key was used with "
    "another body (INPUT_IDEMPOTENCY_KEY_REUSED).",
    429: "Over a rate limit or the per-client concurrency (RATE_*; Retry-After says when).",
    503: "Overloaded, restarting or store unreachable: retry (SERVICE_UNAVAILABLE).",
    504: "Took longer than the request timeout (SERVICE_TIMEOUT).",
}


def make_api(
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_inflight_body_bytes: int | None = None,
    *,
    gate: AccountsGate | None = None,
    metrics: IngressMetrics | None = None,
    places: InflightLimits | None = None,
    body_timeout_s: float = DEFAULT_BODY_TIMEOUT_S,
    min_body_rate: int = DEFAULT_MIN_BODY_RATE,
) -> FastAPI:
    """A new app with the error mapping and the guards, and no routes (the Ingress adds its own). With ``gate``,
    every ``/v1/*`` caller is named (a 401 without a valid key) before its body is read, and with ``places`` takes
    its place then (so a body still arriving holds one); with ``metrics``, every request is counted by route,
    status and model."""
    api = FastAPI(
        responses={status: {"model": ErrorResponse, "description": d} for status, d in ERROR_STATUSES.items()},
        strict_content_type=False,  # `curl -d` without a JSON Content-Type still works
        # Trailing-slash redirects are off: Starlette builds their Location from the client's Host header (an open
        # redirect); the Guard answers them with a relative Location instead.
        redirect_slashes=False,
        title="Classifier API (Jina-compatible, self-hosted)",
        version="0.1.0",
        description="Zero-shot and few-shot classification of text and images over embedding models, "
        "served by Ray Serve. Wire-compatible with Jina AI's Classifier API: change the base URL. "
        "With keys required, send `Authorization: Bearer <key>` (keys from `./scripts/keys create`).",
    )
    api.state.max_request_bytes = max_request_bytes  # read by the 413 handler; set once, here
    # Starlette types every handler as taking any Exception; each of these is registered for its own class only.
    api.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    api.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(BackPressureError, _unavailable)
    api.add_exception_handler(RayActorError, _unavailable)
    api.add_exception_handler(Exception, _unhandled)
    # Inside the guard: a body over the limit is counted while it arrives.
    api.add_middleware(
        BodyLimit, max_body_size=max_request_bytes, max_inflight_bytes=max_inflight_body_bytes or 4 * max_request_bytes,
        body_timeout_s=body_timeout_s, min_body_rate=min_body_rate,
    )
    api.add_middleware(Guard, max_request_bytes=max_request_bytes, gate=gate, metrics=metrics, places=places)  # outermost
    return api


def _routed(scope, path: str) -> bool:
    """Whether a route of the app serves ``path`` (Starlette's own test for a trailing-slash redirect)."""
    probe = {**scope, "path": scope.get("root_path", "") + path}
    return any(route.matches(probe)[0] != Match.NONE for route in scope["app"].router.routes)


def _relative_redirect(scope, path: str) -> Response:
    """``/docs/`` -> 307 to ``/docs`` (with the query), a relative Location: never one built from the client's Host
    header, which would make the service an open redirect."""
    query = scope.get("query_string", b"").decode("latin-1")
    target = scope.get("root_path", "") + path.rstrip("/") + (f"?{query}" if query else "")
    return Response(status_code=307, headers={"Location": target})


class Guard:
    """The outermost middleware: the request id, decided once; oversized bodies refused before reading; the caller
    named, and its place taken, before the body is read; trailing slashes redirected relatively; the rate-limit headers the route left in request.state; any escaped error ->
    Jina's 500; the request's metrics.

    A plain ASGI middleware, not Starlette's ``BaseHTTPMiddleware`` (``app.middleware("http")``): that one runs the
    rest of the app in a task of its own, behind an anyio task group and a memory stream for the response's
    messages, several event-loop turns and ~100 us of CPU per request for nothing this guard needs. Here the
    response's messages pass straight through; the start message gets the rate-limit headers (replacing any of the
    same name, as ``response.headers.update`` did) and records the metrics (latency up to the response's start, as
    before)."""

    def __init__(
        self, app, max_request_bytes: int, gate: AccountsGate | None, metrics: IngressMetrics | None,
        places: InflightLimits | None = None,
    ):
        self.app = app
        self.max_request_bytes = max_request_bytes
        self.gate = gate
        self.metrics = metrics
        self.places = places

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        request = Request(scope, receive)  # its state is the scope's: what the route sets there is seen here
        request_id_of(request)
        length = request.headers.get("content-length")
        if length and length.isascii() and length.isdigit() and int(length) > self.max_request_bytes:
            response = error_response(request, 413, "INPUT_TOO_LARGE", f"Request body over {self.max_request_bytes} bytes.")
            return await response(scope, receive, send)
        path = scope["path"][len(scope.get("root_path", "")):]
        place = None
        if self.gate is not None and path.startswith("/v1/"):
            # Who is calling, before the body is read or validated: without a valid key a client gets its 401,
            # never a 422 about a body it may not send, and never makes the ingress parse it. Its place is taken
            # now too, so a body that is still arriving counts against its client's and the replica's limits.
            try:
                principal = request.state.principal = await self.gate.principal(
                    request.headers.get("authorization"), client_ip(request)
                )
                if self.places is not None:
                    self.places.enter(principal.rate_subject)
                    place = principal.rate_subject
            except ServiceError as exc:
                return await (await _service_error(request, exc))(scope, receive, send)
            request.state.placed = place is not None
        if path != "/" and path.endswith("/") and _routed(scope, path.rstrip("/")):
            return await _relative_redirect(scope, path)(scope, receive, send)
        try:
            await self._guarded(scope, receive, send, request)
        finally:
            if place is not None and self.places is not None:
                self.places.leave(place)

    async def _guarded(self, scope, receive, send, request: Request) -> None:
        started = time.perf_counter()
        response_started = False

        async def guarded_send(message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                rate_headers = getattr(request.state, "rate_headers", None)
                if rate_headers:
                    MutableHeaders(scope=message).update(rate_headers)
                if self.metrics is not None:
                    route = getattr(scope.get("route"), "path", "unmatched")
                    model = getattr(request.state, "model", "")
                    self.metrics.http(route, scope["method"], message["status"], model,
                                      1000 * (time.perf_counter() - started))
            await send(message)

        try:
            await self.app(scope, receive, guarded_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never an HTML 500
            if response_started:
                raise  # too late for a body of ours: the server closes the connection
            await (await _unhandled(request, exc))(scope, receive, guarded_send)
