"""ApiError from every kind of error answer (Jina's body, a proxy's HTML page, FastAPI's default 422), picklable,
and ApiConnectionError when nothing answers (after the retries)."""
from __future__ import annotations

import pickle
import socket

import httpx
import pytest

from classifier_client import ApiConnectionError, ApiError, Client


def test_api_error_from_jina_body_headers_and_other_bodies():
    r = httpx.Response(429, json={"code": "RATE_REQUEST_LIMIT_EXCEEDED", "detail": "Too many.", "request_id": "abc"},
                       headers={"Retry-After": "4", "X-Request-ID": "other"})
    e = ApiError.from_response(r)
    assert (e.status, e.code, e.detail, e.request_id, e.retry_after) == (429, "RATE_REQUEST_LIMIT_EXCEEDED", "Too many.", "abc", 4.0)
    assert str(e) == "RATE_REQUEST_LIMIT_EXCEEDED: Too many. (request_id abc)"
    errors = [{"field": "input", "message": "Field required", "type": "missing"}]
    e = ApiError.from_response(httpx.Response(422, json={"code": "INPUT_VALIDATION_FAILED", "detail": "Invalid", "request_id": "r", "errors": errors}))
    assert e.errors == errors
    # a proxy's HTML page: no code in the body, the request id from the header
    e = ApiError.from_response(httpx.Response(502, text="<html><body>Bad   gateway</body></html>", headers={"X-Request-ID": "h1"}))
    assert (e.code, e.request_id, e.retry_after) == ("HTTP_502", "h1", None) and "Bad gateway" in e.detail
    # FastAPI's default 422 (a service that is not ours): detail is a list
    e = ApiError.from_response(httpx.Response(422, json={"detail": [{"loc": ["body", "input"], "msg": "Field required"}]}))
    assert e.code == "HTTP_422" and e.detail == "Field required" and e.errors[0]["msg"] == "Field required"
    assert str(ApiError(404, "RESOURCE_NOT_FOUND", "gone")) == "RESOURCE_NOT_FOUND: gone"
    copy = pickle.loads(pickle.dumps(e))
    assert (type(copy), copy.code, copy.errors, str(copy)) == (ApiError, e.code, e.errors, str(e))
    c = pickle.loads(pickle.dumps(ApiConnectionError("refused")))
    assert isinstance(c, ApiConnectionError) and (c.status, c.code) == (0, "CONNECTION_ERROR")


def test_connection_refused_is_retried_then_raised_as_api_connection_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda req: sent.append(req.url.path)]})
    with Client(f"http://127.0.0.1:{port}", http_client=http, max_retries=2, backoff=0.01) as c:
        with pytest.raises(ApiConnectionError) as err:
            c.list()
    http.close()
    assert sent == ["/v1/classifiers"] * 3
    assert err.value.status == 0 and err.value.code == "CONNECTION_ERROR" and isinstance(err.value, ApiError)
