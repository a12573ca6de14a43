"""The client's errors: :class:`ApiError` for an error answer of the API, :class:`ApiConnectionError` for none.

Built from the service's error body ``{"code", "detail", "request_id"}`` (Jina's), and from anything else a proxy or
another server may answer, so a caller can always branch on ``code`` and quote ``request_id``.
"""
from __future__ import annotations

from typing import Any

import httpx

from classifier_client.retry import parse_retry_after


class ApiError(Exception):
    """An error answer of the API (or, as :class:`ApiConnectionError`, no answer at all).

    ``code`` is Jina's machine-readable code (``INPUT_INVALID_LABELS``, ``RATE_REQUEST_LIMIT_EXCEEDED``, ...; see
    the README's error table); a body without one (a proxy's HTML page, FastAPI's default) gets ``HTTP_<status>``.
    ``retry_after`` is the parsed ``Retry-After`` header in seconds, or None. ``errors`` lists the fields of a 422.
    """

    def __init__(
        self, status: int, code: str, detail: str, *, request_id: str | None = None, retry_after: float | None = None,
        errors: list | None = None, body: Any = None,
    ):
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after
        self.errors = errors
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.detail}{rid}"

    def __reduce__(self):  # picklable (multiprocessing, Ray tasks) despite the keyword-only fields
        return (_rebuild_api_error, (type(self), self.__dict__.copy()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, detail={self.detail!r}, request_id={self.request_id!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """Build from an error response: Jina's body ``{"code", "detail", "request_id"}``, whatever else it is."""
        try:
            body = response.json()
        except ValueError:
            body = None
        code = detail = request_id = errors = None
        if isinstance(body, dict):
            code, detail, request_id, errors = body.get("code"), body.get("detail"), body.get("request_id"), body.get("errors")
            if detail is not None and not isinstance(detail, str):  # FastAPI's default 422: a list of dicts
                errors = errors if errors is not None else detail
                detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail) \
                    if isinstance(detail, list) else str(detail)
        if not detail:
            text = response.text.strip()
            detail = " ".join(text.split())[:500] if text else (response.reason_phrase or "error")
        return cls(
            response.status_code,
            str(code) if code else f"HTTP_{response.status_code}",
            detail,
            request_id=request_id or response.headers.get("x-request-id"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            errors=errors if isinstance(errors, list) else None,
            body=body,
        )


def _rebuild_api_error(cls: type[ApiError], state: dict) -> ApiError:
    err = ApiError.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err


class ApiConnectionError(ApiError):
    """No HTTP answer: the connection failed, timed out or was dropped (after any retries)."""

    def __init__(self, detail: str, *, code: str = "CONNECTION_ERROR"):
        super().__init__(0, code, detail)

