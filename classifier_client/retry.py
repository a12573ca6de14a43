"""The client's one retry policy: what is retried, after which wait, and how often (for Client and AsyncClient).

One policy for both clients (:class:`RetryPolicy`, run on tenacity's ``Retrying`` / ``AsyncRetrying``), so they retry
exactly alike, and its decisions are pure functions (:func:`parse_retry_after`, :func:`retry_wait`) a test can check
without a server. Resending is decided per call: a request that may have reached the server is sent again only
where that is safe (GETs, and ``train``, which carries an ``Idempotency-Key``).
"""
from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import httpx
from tenacity import RetryCallState

RETRY_STATUSES = frozenset({429, 503, 504})
# + 409 for a call with an Idempotency-Key: the key's first request is still running, a retry gets its answer
IDEMPOTENT_RETRY_STATUSES = RETRY_STATUSES | {409}


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (``"3"``, also ``"2.5"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, default the current time). Past dates give 0;
    missing, negative or unparseable values give None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not one of them
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def retry_wait(
    attempt: int, *, status: int | None = None, retry_after: float | None = None, max_retries: int = 3,
    max_retry_wait: float = 30.0, backoff: float = 0.5, max_backoff: float = 8.0,
    statuses: frozenset[int] = RETRY_STATUSES,
) -> float | None:
    """How long to wait before retry number ``attempt + 1`` of a failed attempt ``attempt`` (0-based), or None to
    give up. ``status`` is the HTTP status (None for a connection failure the caller deemed safe to resend).

    Retried: ``statuses`` (429/503/504; a train adds 409) and connection failures, at most ``max_retries`` times.
    The wait is ``retry_after`` when the server gave one (refused as None if over ``max_retry_wait``: waiting less
    would only fail again), else ``backoff * 2**attempt`` capped at ``min(max_backoff, max_retry_wait)``."""
    if attempt >= max_retries:
        return None
    if status is not None and status not in statuses:
        return None
    if retry_after is not None:
        return retry_after if retry_after <= max_retry_wait else None
    return min(backoff * (2 ** attempt), max_backoff, max_retry_wait)



class RetryPolicy:
    """The client's one retry policy, for one call; ``Client`` runs it on tenacity's ``Retrying``,
    ``AsyncClient`` on ``AsyncRetrying`` (``tenacity_args``), so both retry exactly alike.

    After each attempt :func:`retry_wait` decides, from the outcome: a response with a status of
    ``statuses`` waits its ``Retry-After`` (none over ``max_retry_wait``) or the exponential backoff; a
    transport error is retried only if the request never left (connect errors, pool timeouts) or resending it is
    safe (GETs, calls marked ``resend_safe``); at most ``max_retries`` retries. Anything else is final: a response
    is returned (an error status becomes an ``ApiError`` in the caller), an exception is raised as it is.
    (``httpx``'s ``request`` reads and closes each response, so a retried one holds no connection.)
    """

    _NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

    def __init__(self, method: str, *, resend_safe: bool, statuses: frozenset[int], max_retries: int,
                 max_retry_wait: float, backoff: float):
        self.method = method
        self.resend_safe = resend_safe
        self.statuses = statuses
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self._next_wait = 0.0

    def next_wait(self, state: RetryCallState) -> float | None:
        """Seconds to wait before retrying the attempt that ended in ``state.outcome``, or None: it is final."""
        outcome = state.outcome
        if outcome is None:
            return None
        status = retry_after = None
        if outcome.failed:
            exc = outcome.exception()
            if not (isinstance(exc, httpx.TransportError) and self._may_resend(exc)):
                return None
        else:
            response: httpx.Response = outcome.result()
            if response.is_success:
                return None
            status, retry_after = response.status_code, parse_retry_after(response.headers.get("retry-after"))
        return retry_wait(
            state.attempt_number - 1, status=status, retry_after=retry_after, max_retries=self.max_retries,
            max_retry_wait=self.max_retry_wait, backoff=self.backoff, statuses=self.statuses,
        )

    def _may_resend(self, exc: httpx.TransportError) -> bool:
        return isinstance(exc, self._NEVER_SENT) or self.resend_safe or self.method == "GET"

    # tenacity asks `retry` first, then `wait`, after each attempt: decide once, then hand out that wait
    def _retry(self, state: RetryCallState) -> bool:
        wait = self.next_wait(state)
        self._next_wait = wait or 0.0
        return wait is not None

    def _wait(self, state: RetryCallState) -> float:
        return self._next_wait

    def tenacity_args(self) -> dict[str, Any]:
        """Keyword arguments of ``tenacity.Retrying`` / ``AsyncRetrying``: no stop of tenacity's, since
        ``retry_wait`` already counts the attempts (the final outcome is returned or raised, never a RetryError)."""
        return {"retry": self._retry, "wait": self._wait}

