"""The client's one retry policy (classifier_client/retry.py): Retry-After parsing and the pure retry decisions,
then the policy as Client and AsyncClient run it alike against scripted answers (httpx.MockTransport stands in for
the server, not for the policy): what is retried, how often, after which wait, and what comes back when the retries
end. Over real HTTP: test_sync_client.py; the real service's 429: tests/serve_app/test_python_client.py."""
from __future__ import annotations

import asyncio
import email.utils
import time

import httpx
import pytest

from classifier_client import ApiConnectionError, ApiError, AsyncClient, Client, parse_retry_after, retry_wait
from classifier_client.retry import IDEMPOTENT_RETRY_STATUSES

URL = "http://classifier.test"


LIST_OK = [{"classifier_id": "c1", "user_id": "u1", "model": "m", "labels": ["a", "b"], "access": "private",
            "num_samples": 2, "updated_number": 0, "used_number": 0, "created_at": "2024-01-01T00:00:00Z",
            "updated_at": "2024-01-01T00:00:00Z"}]


def test_parse_retry_after_seconds_dates_and_garbage():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("2.5") == 2.5
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "-1", "nan", "inf", "Wed, 99 Foo 2015 07:28:00 GMT"):
        assert parse_retry_after(bad) is None, bad


def test_retry_wait_honours_retry_after_within_bounds():
    assert retry_wait(0, status=429, retry_after=2.0) == 2.0
    assert retry_wait(0, status=503, retry_after=0.0) == 0.0
    assert retry_wait(0, status=429, retry_after=31.0, max_retry_wait=30) is None  # raise at once, not wait less
    assert retry_wait(0, status=429, retry_after=31.0, max_retry_wait=60) == 31.0
    assert [retry_wait(a, status=504, max_retries=10) for a in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert retry_wait(0, status=None, backoff=0.1) == 0.1  # a connection failure
    assert retry_wait(3, status=429, retry_after=1.0, max_retries=3) is None
    for status in (400, 401, 404, 409, 422, 500, 502):
        assert retry_wait(0, status=status, retry_after=1.0) is None, status


def test_only_calls_with_an_idempotency_key_retry_a_409():
    """409 CONFLICT_RESOURCE_BUSY: the key's first request is still running; a train (which resends its own key)
    waits and retries to get that answer. Without a key a 409 is not the client's to retry."""
    c = Client("http://example.invalid", api_key="")
    train = c._train_call([("a", "x")], None, None, "private", 10, None, None)
    classify = c._classify_call(["a"], ["x", "y"], "m", None, None)
    assert train.retry_statuses == IDEMPOTENT_RETRY_STATUSES and 409 not in classify.retry_statuses
    assert retry_wait(0, status=409, retry_after=1.0, statuses=train.retry_statuses) == 1.0
    assert retry_wait(0, status=409, retry_after=1.0, statuses=classify.retry_statuses) is None
    assert retry_wait(0, status=422, retry_after=1.0, statuses=train.retry_statuses) is None  # a reused key: final
    c.close()


def _script(*answers):
    """A transport answering each request with the next of ``answers`` (a Response factory or an exception class);
    ``sent`` records (method, path, Idempotency-Key, monotonic time) of every request."""
    sent: list[tuple[str, str, str | None, float]] = []
    queue = list(answers)

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.method, request.url.path, request.headers.get("idempotency-key"), time.monotonic()))
        answer = queue.pop(0)
        if isinstance(answer, type) and issubclass(answer, Exception):
            raise answer("scripted", request=request)
        return answer()

    return httpx.MockTransport(handler), sent


def _status(code: int, retry_after: str | None = None, body=None):
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    return lambda: httpx.Response(code, headers=headers, json=body if body is not None else {"code": f"E{code}", "detail": "x"})


def _call(kind: str, transport: httpx.MockTransport, method: str, **client_args):
    """Run ``method`` (list/classify/train) on a sync or async client with ``transport``."""
    args = {"api_key": "", "backoff": 0.0, **client_args}
    calls = {"list": ((), {}), "classify": ((["hi"],), {"labels": ["a", "b"], "model": "m"}),
             "train": (([("t", "a")],), {"model": "m"})}
    a, kw = calls[method]
    if kind == "sync":
        with httpx.Client(transport=transport) as http, Client(URL, http_client=http, **args) as c:
            return getattr(c, method)(*a, **kw)

    async def go():
        async with httpx.AsyncClient(transport=transport) as http, AsyncClient(URL, http_client=http, **args) as c:
            return await getattr(c, method)(*a, **kw)

    return asyncio.run(go())


KINDS = ["sync", "async"]


@pytest.mark.parametrize("kind", KINDS)
def test_retry_statuses_wait_their_retry_after_then_succeed(kind):
    transport, sent = _script(_status(503, "0.05"), _status(429, "0"), _status(504), _status(200, body=LIST_OK))
    (s,) = _call(kind, transport, "list", max_retries=3)
    assert s.classifier_id == "c1" and len(sent) == 4
    assert sent[1][3] - sent[0][3] >= 0.05 - 0.005  # Retry-After honoured


@pytest.mark.parametrize("kind", KINDS)
def test_retries_end_after_max_retries_with_the_last_error(kind):
    transport, sent = _script(*[_status(503, "0")] * 3)
    with pytest.raises(ApiError) as err:
        _call(kind, transport, "list", max_retries=2)
    assert (err.value.status, err.value.retry_after, len(sent)) == (503, 0.0, 3)


@pytest.mark.parametrize("kind", KINDS)
def test_retry_after_over_max_retry_wait_and_other_statuses_are_final(kind):
    transport, sent = _script(_status(429, "60"))
    with pytest.raises(ApiError) as err:
        _call(kind, transport, "list", max_retry_wait=30)
    assert (err.value.status, err.value.retry_after, len(sent)) == (429, 60.0, 1)
    for code in (400, 409, 500):  # 409 only for a call with an Idempotency-Key
        transport, sent = _script(_status(code, "0"))
        with pytest.raises(ApiError):
            _call(kind, transport, "classify")
        assert len(sent) == 1, code


@pytest.mark.parametrize("kind", KINDS)
def test_transport_errors_are_retried_only_where_resending_is_safe(kind):
    # never sent: retried for any call; the POST that may have arrived is not resent
    transport, sent = _script(httpx.ConnectError, _status(200, body={"data": []}))
    with pytest.raises(ApiError):  # retried, then {"data": []} is no ClassificationResponse: the 2nd answer counted
        _call(kind, transport, "classify")
    assert len(sent) == 2
    transport, sent = _script(httpx.ReadTimeout)
    with pytest.raises(ApiConnectionError) as err:
        _call(kind, transport, "classify")
    assert (err.value.code, len(sent)) == ("TIMEOUT", 1)
    # a GET is safe to resend
    transport, sent = _script(httpx.ReadTimeout, httpx.RemoteProtocolError, _status(200, body=LIST_OK))
    assert len(_call(kind, transport, "list")) == 1 and len(sent) == 3


@pytest.mark.parametrize("kind", KINDS)
def test_train_resends_its_key_after_a_timeout_and_a_409(kind):
    done = {"classifier_id": "c1", "num_samples": 1, "usage": {"total_tokens": 1}}
    transport, sent = _script(httpx.ReadTimeout, _status(409, "0"), _status(200, body=done))
    assert _call(kind, transport, "train").classifier_id == "c1"
    keys = {key for _, _, key, _ in sent}
    assert len(sent) == 3 and len(keys) == 1 and None not in keys
