"""Admission of a request on an ingress replica: load shedding, per-client limits, the gate, the timeout, the charge.

:class:`AdmissionControl` gets everything it uses in its constructor (the accounts gate, the metrics and three
numbers), so it runs in-process in tests, over the real gate. No Ray and no HTTP: a route passes where the
rate-limit headers go (``serve_app.http_api.rate_header_sink``).
"""

import asyncio
import sys
from typing import Awaitable, Callable, TypeVar

from classifiers.accounts.gate import AccountsGate, Ticket
from classifiers.accounts.keys import Principal
from classifiers.accounts.ratelimit import Mode
from classifiers.protocol.errors import REQUEST_LIMIT, RateLimited, ServiceError, ServiceTimeout, ServiceUnavailable
from deployments.metrics import IngressMetrics

R = TypeVar("R")
HeaderSink = Callable[[dict[str, str]], None]


class AdmissionControl:
    """One replica's admission: at most ``max_inflight`` requests at once (beyond it a quick 503), at most
    ``max_inflight_per_client`` of one client (429), the gate's limits and balance (429 / 403), all before any
    model work; then the work under ``request_timeout_s`` (504), and a charge for what succeeded only."""

    def __init__(
        self, gate: AccountsGate, metrics: IngressMetrics, *, max_inflight: int, max_inflight_per_client: int,
        request_timeout_s: float,
    ):
        self.gate = gate
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.max_inflight_per_client = max_inflight_per_client
        self.request_timeout_s = request_timeout_s
        self.inflight = 0
        self._inflight_by_client: dict[str, int] = {}
        self.shed = {"overloaded": 0, "client_concurrency": 0, "timeouts": 0}

    async def run(
        self, principal: Principal, mode: Mode, work: Callable[[Ticket], Awaitable[R]],
        charge: Callable[[R], int | None], *, rate_headers: HeaderSink | None = None, model: str = "", inputs: int = 0, op: str | None = None,
    ) -> R:
        """Shed load (503 / 429 per client) and admit (limits 429, balance 403) before any model work, run ``work``
        under the request timeout (504), and charge ``charge(result)`` tokens (None: paid before, not again).
        ``rate_headers`` gets the rate-limit headers for the response, each time they change."""
        client = principal.rate_subject
        self._shed(client)
        self.inflight += 1
        self._inflight_by_client[client] = self._inflight_by_client.get(client, 0) + 1
        try:
            ticket = await self._admit(principal, mode, rate_headers)
            result = await self._work(ticket, work, rate_headers)
            tokens = charge(result)
            if tokens is None:  # paid before (an idempotent replay): not again
                ticket.refund()
            else:
                ticket.done(tokens)
            self.metrics.served(mode, model, inputs, tokens or 0)
            if op is not None:
                self.metrics.op(op)
            if rate_headers is not None:
                rate_headers(ticket.headers())
            return result
        finally:
            self.inflight -= 1
            left = self._inflight_by_client[client] - 1
            if left:
                self._inflight_by_client[client] = left
            else:
                del self._inflight_by_client[client]

    def _shed(self, client: str) -> None:
        if self.inflight >= self.max_inflight:
            self.shed["overloaded"] += 1
            self.metrics.refused("SERVICE_UNAVAILABLE")
            raise ServiceUnavailable("This replica is at capacity; retry shortly.")
        if self._inflight_by_client.get(client, 0) >= self.max_inflight_per_client:
            self.shed["client_concurrency"] += 1
            self.metrics.refused("CLIENT_CONCURRENCY")
            raise RateLimited(
                f"Too many concurrent requests: at most {self.max_inflight_per_client} in flight per client.",
                code=REQUEST_LIMIT, retry_after_s=1.0,
            )

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
            if sys.version_info >= (3, 11):
                # The same deadline as wait_for, without its task per request (and the event-loop turns it costs).
                async with asyncio.timeout(self.request_timeout_s):
                    return await work(ticket)
            return await asyncio.wait_for(work(ticket), self.request_timeout_s)
        except asyncio.TimeoutError:
            self.shed["timeouts"] += 1
            ticket.refund()  # a failed request is never charged, even if its update was applied meanwhile
            raise ServiceTimeout(
                f"The request did not finish within {self.request_timeout_s:g}s. A /train may still have been "
                "applied: retry it with the same Idempotency-Key."
            ) from None
        except ServiceError:
            ticket.refund()  # failed requests (any 4xx/5xx) are never charged
            raise
        finally:
            if rate_headers is not None:
                rate_headers(ticket.headers())
