"""The HTTP face of the service: the FastAPI app, and the one place errors become status codes.

Every error leaves as Jina's body ``{"code", "detail", "request_id"}`` (plus ``errors`` for schema
failures); the request id is the one Ray Serve's proxy assigns (or the client's ``X-Request-ID``) and is
echoed in the ``X-Request-ID`` response header and in the replica's log lines.
"""
from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifiers.errors import RequestValidationFailed, ServiceError

logger = logging.getLogger("ray.serve")

MAX_REQUEST_BYTES = 256 * 1024 * 1024


# The one account of anonymous mode. Jina's spec types `user_id` as a UUID, so the anonymous owner is one too
# (fixed, so classifiers created anonymously stay listed across restarts); never derived from a key.
ANONYMOUS = "00000000-0000-4000-8000-000000000000"


def principal_of(authorization: str | None) -> str:
    """Who is calling: the owner recorded in classifier state. The seam for API keys (accounts issue):
    until keys exist every caller is the single anonymous owner."""
    return ANONYMOUS


def request_id_of(request: Request) -> str:
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def error_response(request: Request, status: int, code: str, detail: str, **extra) -> JSONResponse:
    body = {"code": code, "detail": detail, "request_id": request_id_of(request), **extra}
    return JSONResponse(status_code=status, content=body)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("request %s failed: %s", request_id_of(request), exc.detail, exc_info=exc)
    extra = {"errors": exc.errors} if isinstance(exc, RequestValidationFailed) else {}
    return error_response(request, exc.status, exc.code, exc.detail, **extra)


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
    codes = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "INPUT_TOO_LARGE"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    logger.error("request %s failed with an internal error", rid, exc_info=exc)
    return error_response(
        request, 500, "INTERNAL_ERROR",
        f"An unexpected error occurred. If this persists, report request_id {rid}.",
    )


def make_api() -> FastAPI:
    api = FastAPI(
        strict_content_type=False,  # `curl -d` without a JSON Content-Type still works
        title="Classifier API (Jina-compatible, self-hosted)",
        version="0.1.0",
        description="Zero-shot and few-shot classification of text and images over embedding models, "
        "served by Ray Serve. Wire-compatible with Jina AI's Classifier API: change the base URL.",
    )
    api.add_exception_handler(ServiceError, _service_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(Exception, _unhandled)

    @api.middleware("http")
    async def _guard(request: Request, call_next):
        # Refuse oversized bodies before reading them, and turn any escaped error into Jina's 500 body.
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_REQUEST_BYTES:
            return error_response(request, 413, "INPUT_TOO_LARGE", f"Request body over {MAX_REQUEST_BYTES} bytes.")
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never an HTML 500
            return await _unhandled(request, exc)

    return api


api = make_api()
