"""Admission of a request on an ingress replica: load shedding, per-client limits, the gate, the timeout, the charge.

:class:`InflightLimits` holds a replica's places: an HTTP request takes one as soon as its headers name the caller
(``serve_app.http_api.Guard``), before its body is read, so requests whose bodies are still arriving count
against the per-client and per-replica limits (one key cannot hold every place with half-sent bodies); a Python
handle call takes one when it is called. :class:`AdmissionControl` gets everything it uses in its constructor
(the accounts gate, the metrics, the limits and a timeout), so it runs in-process in tests, over the real gate.
No Ray and no HTTP: a route passes where the rate-limit headers go (``serve_app.http_api.rate_header_sink``).
"""

import asyncio
import contextlib
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable, TypeVar

from classifiers.accounts.gate import AccountsGate, Ticket
from classifiers.accounts.keys import Principal
from classifiers.accounts.ratelimit import Mode
from classifiers.protocol.errors import (
    REQUEST_LIMIT,
    TOKEN_LIMIT,
    InsufficientBalance,
    RateLimited,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from deployments.metrics import IngressMetrics

R = TypeVar("R")
HeaderSink = Callable[[dict[str, str]], None]


async def within(awaitable: Awaitable[R], seconds: float) -> R:
    """``awaitable`` under a deadline (asyncio.TimeoutError past it): on 3.11+ without wait_for's task per call
    (and the event-loop turns it costs)."""
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


class InflightLimits:
    """A replica's places: at most ``max_inflight`` requests at once (beyond it a quick 503), at most
    ``max_inflight_per_client`` of one client (429), each held from the moment the request is known until it is
    answered."""

    def __init__(self, metrics: IngressMetrics, *, max_inflight: int, max_inflight_per_client: int):
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_inflight_per_client = max_inflight_per_client
        self.inflight = 0
        self._by_client: dict[str, int] = {}
        self.shed = {"overloaded": 0, "client_concurrency": 0}

    def enter(self, client: str) -> None:
        """Take a place for ``client``, or refuse: 503 when the replica is full, 429 when the client is."""
        if self.inflight >= self.max_inflight:
            self.shed["overloaded"] += 1
            self.metrics.refused("SERVICE_UNAVAILABLE")
            raise ServiceUnavailable("This replica is at capacity; retry shortly.")
        if self._by_client.get(client, 0) >= self.max_inflight_per_client:
            self.shed["client_concurrency"] += 1
            self.metrics.refused("CLIENT_CONCURRENCY")
            raise RateLimited(
                f"Too many concurrent requests: at most {self.max_inflight_per_client} in flight per client.",
                code=REQUEST_LIMIT, retry_after_s=1.0,
            )
        self.inflight += 1
        self._by_client[client] = self._by_client.get(client, 0) + 1

    def leave(self, client: str) -> None:
        self.inflight -= 1
        left = self._by_client[client] - 1
        if left:
            self._by_client[client] = left
        else:
            del self._by_client[client]

    @contextlib.contextmanager
    def held(self, client: str):
        self.enter(client)
        try:
            yield
        finally:
            self.leave(client)


@dataclass(frozen=True)
class OperationContext:
    """One request's admission facts, built once at the edge (``serve_app/operations.py``) and passed down: who is
    calling, the rate-limit mode and the operation, the model it names (a bounded metrics tag), its input count,
    where its rate-limit headers go (HTTP only) and whether the HTTP edge already took its place."""

    principal: Principal
    mode: Mode
    model: str = ""
    inputs: int = 0
    op: str | None = None
    rate_headers: HeaderSink | None = None
    placed: bool = False


class AdmissionControl:
    """One replica's admission: a place (:class:`InflightLimits`; taken by the HTTP edge already, or here for a
    handle call), the gate's limits and balance (429 / 403) for one request, then the work under
    ``request_timeout_s`` (504), in which the service counts the request's tokens and admits them through its
    ticket before any model work, and a charge for what succeeded only."""

    def __init__(self, gate: AccountsGate, metrics: IngressMetrics, inflight: InflightLimits, *, request_timeout_s: float):
        self.gate = gate
        self.metrics = metrics
        self.places = inflight
        self.request_timeout_s = request_timeout_s
        self.timeouts = 0

    @property
    def inflight(self) -> int:
        return self.places.inflight

    @property
    def shed(self) -> dict[str, int]:
        return {**self.places.shed, "timeouts": self.timeouts}

    async def run(self, ctx: OperationContext, work: Callable[[Ticket], Awaitable[R]], charge: Callable[[R], int | None]) -> R:
        """Take a place unless the HTTP edge did, admit (limits 429, balance 403) before any model work, run
        ``work`` under the request timeout (504), and charge ``charge(result)`` tokens (None: paid before, not
        again). ``ctx.rate_headers`` gets the rate-limit headers for the response, each time they change."""
        if ctx.placed:
            return await self._admitted(ctx, work, charge)
        with self.places.held(ctx.principal.rate_subject):
            return await self._admitted(ctx, work, charge)

    async def _admitted(
        self, ctx: OperationContext, work: Callable[[Ticket], Awaitable[R]], charge: Callable[[R], int | None]
    ) -> R:
        ticket = await self._admit(ctx.principal, ctx.mode, ctx.rate_headers)
        result = await self._work(ticket, work, ctx.rate_headers)
        tokens = charge(result)
        if tokens is None:  # paid before (an idempotent replay): not again
            ticket.refund()
        else:
            ticket.done(tokens)
        self.metrics.served(ctx.mode, ctx.model, ctx.inputs, tokens or 0)
        if ctx.op is not None:
            self.metrics.op(ctx.op)
        if ctx.rate_headers is not None:
            ctx.rate_headers(ticket.headers())
        return result

    async def _admit(self, principal: Principal, mode: Mode, rate_headers: HeaderSink | None) -> Ticket:
        try:
            return await self.gate.admit(principal, mode)
        except ServiceError as exc:
            self.metrics.refused(exc.code)
            if rate_headers is not None and isinstance(exc, RateLimited):
                rate_headers(self.gate.refused_headers(principal, mode))
            raise

    async def _work(self, ticket: Ticket, work: Callable[[Ticket], Awaitable[R]], rate_headers: HeaderSink | None) -> R:
        try:
            return await within(work(ticket), self.request_timeout_s)
        except asyncio.TimeoutError:
            self.timeouts += 1
            ticket.refund()  # a failed request is never charged, even if its update was applied meanwhile
            raise ServiceTimeout(
                f"The request did not finish within {self.request_timeout_s:g}s. A /train may still have been "
                "applied: retry it with the same Idempotency-Key."
            ) from None
        except ServiceError as exc:
            ticket.refund()  # failed requests (any 4xx/5xx) are never charged
            if exc.code in (TOKEN_LIMIT, InsufficientBalance.code):
                self.metrics.refused(exc.code)  # refused on its count, before any model work
            raise
        except BaseException:
            # Cancelled (the client left) or failed unexpectedly: its reservation goes back. A /train charged at
            # submission keeps its charge: the update is applied whether or not the client waits for the answer.
            if ticket.charged is None:
                ticket.refund()
            raise
        finally:
            if rate_headers is not None:
                rate_headers(ticket.headers())
