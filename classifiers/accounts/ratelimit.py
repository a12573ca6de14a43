"""Requests- and tokens-per-minute limits that hold across ingress replicas. No Ray.

The semantics are a token bucket per (subject, mode, kind): a bucket of ``limit`` units (requests or tokens)
refilled continuously at ``limit / 60`` per second. A subject is an account (or a client IP in anonymous mode),
a mode is one of ``zeroshot``, ``fewshot``, ``train``, ``embeddings`` (each has its own RPM and TPM), a kind is ``requests``
or ``tokens``. A burst can use the full bucket at once; sustained traffic gets exactly the limit per minute.

**Leases.** The buckets live in one place, a :class:`BudgetAuthority` (in the service: one Ray actor, see
``deployments/accounts_actor.py``). Ingress replicas do not ask it per request: a :class:`LeaseLimiter` takes
a *lease*, a slice of a bucket (``lease_fraction`` of the limit), and spends it locally; only when a slice is
used up does it go back for another (one remote call per slice). Budget granted is removed from the bucket, so
N replicas together never admit more than the bucket holds: the limit is exact for requests. Unused slices go
back to the bucket once unused for ``lease_ttl_s`` (a replica that stops getting traffic does not sit on budget). The
trade-off: with ``R`` replicas serving one subject, up to ``R`` slices may be parked on replicas that do not
need them, so a subject can be refused up to ``R x lease_fraction x limit`` early for at most ``lease_ttl_s``.

**Tokens** are counted before any model work (the ingress tokenises a request first, stopping at the smallest
limit that applies), then *reserved*: :meth:`LeaseLimiter.reserve` takes the request's whole count from the
subject's bucket, all or nothing, before the request may run (a slice too small is topped up from the authority
in one exchange that grants at least what is needed, or nothing). What a request finally uses is settled against
its reservation (:meth:`Admission.charge` of the difference). A request the bucket cannot hold now is refused
with the time until it can (``Retry-After``), and the subject's requests in that mode are refused locally, without
being counted, until then: counting is work too, and a client must not make the service count for free. For the
same reason a request over the limit itself (it can never be admitted) has what was counted of it debited.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

from classifiers.protocol.errors import REQUEST_LIMIT, TOKEN_LIMIT, RateLimited

Mode = Literal["zeroshot", "fewshot", "train", "embeddings"]
Kind = Literal["requests", "tokens"]
MODES: tuple[Mode, ...] = ("zeroshot", "fewshot", "train", "embeddings")


class RateLimit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rpm: int = Field(gt=0, description="Requests per minute (a bucket of this many, refilled at rpm/60 per second).")
    tpm: int = Field(gt=0, description="Tokens per minute (same bucket rule); a single request over it is refused.")


class TierLimits(BaseModel):
    """One tier's limits per mode. Defaults: Jina's published ones."""

    model_config = ConfigDict(extra="forbid")

    zeroshot: RateLimit = Field(default_factory=lambda: RateLimit(rpm=200, tpm=500_000), description="Zero-shot /classify.")
    fewshot: RateLimit = Field(default_factory=lambda: RateLimit(rpm=20, tpm=200_000), description="/classify by classifier_id.")
    train: RateLimit = Field(default_factory=lambda: RateLimit(rpm=20, tpm=200_000), description="/train (create and update).")
    embeddings: RateLimit = Field(
        default_factory=lambda: RateLimit(rpm=500, tpm=1_000_000), description="/v1/embeddings (Jina's free-tier embedding limits)."
    )

    def of(self, mode: Mode) -> RateLimit:
        return getattr(self, mode)


@dataclass
class Bucket:
    """A token bucket; ``level`` may go below zero (token debt), never above ``capacity``."""

    capacity: float
    rate: float  # units per second
    level: float
    at: float

    def refill(self, now: float) -> float:
        if now > self.at:
            self.level = min(self.capacity, self.level + (now - self.at) * self.rate)
            self.at = now
        return self.level

    def wait_for(self, units: float) -> float:
        """Seconds until the bucket holds `units` (from its current level)."""
        return max(0.0, (units - self.level) / self.rate) if self.rate > 0 else math.inf


@dataclass(frozen=True)
class LeaseRequest:
    """One replica's exchange with the authority for one bucket: return unused budget, settle token debt,
    and ask for a new slice (any of the three may be zero)."""

    subject: str
    mode: Mode
    kind: Kind
    limit: int
    want: int = 0
    give_back: float = 0.0
    debit: float = 0.0
    need: int = 0  # grant at least this much, or nothing (a request's reservation is all or nothing)


@dataclass(frozen=True)
class Grant:
    granted: int
    level: float  # the bucket's level after this exchange (for X-RateLimit-Remaining-*)
    retry_after_s: float  # when granted < want: seconds until the bucket holds one more unit


class BudgetSource(Protocol):
    """Where leases come from: :class:`BudgetAuthority` in-process, or the accounts actor in the service."""

    async def exchange(self, requests: list[LeaseRequest]) -> list[Grant]: ...


class BudgetAuthority:
    """The buckets themselves. One per service (in the accounts actor), or in-process in tests and tools."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 200_000):
        self._clock = clock
        self._buckets: dict[tuple[str, str, str], Bucket] = {}
        self.max_buckets = max_buckets

    def _bucket(self, r: LeaseRequest, now: float) -> Bucket:
        key = (r.subject, r.mode, r.kind)
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= self.max_buckets:
                self._forget_full(now)
            b = self._buckets[key] = Bucket(capacity=r.limit, rate=r.limit / 60.0, level=float(r.limit), at=now)
        elif b.capacity != r.limit:  # the limit was reconfigured: keep the spent part
            b.refill(now)
            b.level = min(float(r.limit), b.level - b.capacity + r.limit)
            b.capacity, b.rate = float(r.limit), r.limit / 60.0
        return b

    def _forget_full(self, now: float) -> None:
        """Buckets that have refilled completely carry no information: drop them (bounded memory)."""
        for key in [k for k, b in self._buckets.items() if b.refill(now) >= b.capacity]:
            del self._buckets[key]

    def exchange_now(self, requests: list[LeaseRequest]) -> list[Grant]:
        now = self._clock()
        out = []
        for r in requests:
            b = self._bucket(r, now)
            b.refill(now)
            b.level = min(b.capacity, b.level + r.give_back) - r.debit
            granted = max(0, min(r.want, math.floor(b.level))) if r.want > 0 else 0
            if granted < r.need:
                granted = 0
            b.level -= granted
            retry = b.wait_for(float(max(1, r.need))) if granted < r.want else 0.0
            out.append(Grant(granted=granted, level=b.level, retry_after_s=retry))
        return out

    async def exchange(self, requests: list[LeaseRequest]) -> list[Grant]:
        return self.exchange_now(requests)


@dataclass
class _Lease:
    limits: RateLimit  # the subject's limits at its last admission
    requests: int = 0
    tokens: float = 0.0  # below zero: tokens charged beyond the slice (debt to settle with the authority)
    level_requests: float = 0.0  # the authority's levels at the last exchange (for the Remaining headers)
    level_tokens: float = 0.0
    used_at: float = 0.0  # the last admission: a lease unused for lease_ttl_s goes back
    requests_retry_at: float = 0.0  # refused until then without asking the authority again (it said so)
    tokens_retry_at: float = 0.0
    refilling: bool = False  # an exchange is in flight: return_idle leaves the lease alone


@dataclass(frozen=True)
class Remaining:
    requests: int
    tokens: int


@dataclass
class Admission:
    """A request admitted under a subject's limits; ``charge`` its tokens once they are known."""

    limiter: "LeaseLimiter"
    subject: str
    mode: Mode
    limits: RateLimit
    remaining: Remaining = field(default=Remaining(0, 0))

    def charge(self, tokens: int) -> Remaining:
        """Tokens used beyond what was reserved (negative: given back), settled with the authority later."""
        self.remaining = self.limiter.charge(self.subject, self.mode, self.limits, tokens)
        return self.remaining

    async def reserve(self, tokens: int) -> Remaining:
        """Take the request's counted tokens from the budget now, all or nothing (RateLimited: not now)."""
        self.remaining = await self.limiter.reserve(self.subject, self.mode, self.limits, tokens)
        return self.remaining

    async def debit(self, tokens: int) -> Remaining:
        """Take ``tokens`` from the budget at once, into debt if need be, settled with the authority now."""
        self.remaining = await self.limiter.debit(self.subject, self.mode, self.limits, tokens)
        return self.remaining


class LeaseLimiter:
    """One ingress replica's view of the limits: leases from a :class:`BudgetSource`, spent locally."""

    def __init__(
        self, source: BudgetSource, *, lease_fraction: float = 0.1, lease_ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.source = source
        self.lease_fraction = lease_fraction
        self.lease_ttl_s = lease_ttl_s
        self._clock = clock
        self._leases: dict[tuple[str, Mode], _Lease] = {}
        self.refused = {REQUEST_LIMIT: 0, TOKEN_LIMIT: 0}

    def _slice(self, limit: int) -> int:
        return max(1, math.ceil(limit * self.lease_fraction))

    async def admit(self, subject: str, mode: Mode, limits: RateLimit) -> Admission:
        """Take one request from the subject's budget; refuse (RateLimited) if requests or tokens are spent.

        A refusal is remembered until the authority said the bucket refills (``Retry-After``): a client hammering
        a spent limit is refused locally, never with a call to the authority per request."""
        lease = self._leases.get((subject, mode))
        if lease is None:
            lease = self._leases[(subject, mode)] = _Lease(limits=limits)
        lease.limits = limits
        now = self._clock()
        lease.used_at = now
        if lease.requests < 1 and now < lease.requests_retry_at:
            raise self._refuse(REQUEST_LIMIT, limits.rpm, "requests", mode, lease.requests_retry_at - now)
        if now < lease.tokens_retry_at:  # the bucket was empty, or too low for the last request counted
            raise self._refuse(TOKEN_LIMIT, limits.tpm, "tokens", mode, lease.tokens_retry_at - now)
        if lease.requests < 1 or lease.tokens <= 0:
            await self._refill(subject, mode, lease, limits)
        now = self._clock()
        if lease.requests < 1:
            raise self._refuse(REQUEST_LIMIT, limits.rpm, "requests", mode, lease.requests_retry_at - now)
        if lease.tokens <= 0:
            raise self._refuse(TOKEN_LIMIT, limits.tpm, "tokens", mode, lease.tokens_retry_at - now)
        lease.requests -= 1
        return Admission(self, subject, mode, limits, self._remaining(lease))

    async def reserve(self, subject: str, mode: Mode, limits: RateLimit, tokens: int) -> Remaining:
        """Take ``tokens`` from an admitted request's token budget before its model work: from this replica's slice,
        topped up from the authority when the slice is short (one exchange granting at least the shortfall, or
        nothing). Refused (RateLimited, TOKEN_LIMIT) when the bucket cannot hold them now; the subject's requests in
        this mode are then refused locally until the bucket can (so a too-large request is counted once per
        ``Retry-After``, not once per retry)."""
        lease = self._leases.get((subject, mode))
        if lease is None:
            lease = self._leases[(subject, mode)] = _Lease(limits=limits)
        if lease.tokens < tokens:
            need = math.ceil(tokens - lease.tokens)
            ask = LeaseRequest(subject, mode, "tokens", limits.tpm, want=need + self._slice(limits.tpm), need=need)
            lease.refilling = True
            try:
                (grant,) = await self.source.exchange([ask])
            finally:
                lease.refilling = False
            now = self._clock()
            lease.level_tokens = grant.level
            lease.used_at = now
            if grant.granted < need:
                lease.tokens_retry_at = now + grant.retry_after_s
                raise self._refuse(
                    TOKEN_LIMIT, limits.tpm, "tokens", mode, grant.retry_after_s,
                    detail=f" This request counts {tokens} tokens; they are available in about "
                    f"{max(1, math.ceil(grant.retry_after_s))} s.",
                )
            lease.tokens += grant.granted
            lease.tokens_retry_at = 0.0
        lease.tokens -= tokens
        return self._remaining(lease)

    def _refuse(self, code: str, limit: int, unit: str, mode: Mode, wait_s: float, detail: str = "") -> RateLimited:
        self.refused[code] += 1
        what = "Request" if unit == "requests" else "Token"
        return RateLimited(
            f"{what} rate limit exceeded: {limit} {unit} per minute for {mode}. Retry later.{detail}",
            code=code, retry_after_s=max(1.0, wait_s),
        )

    async def _refill(self, subject: str, mode: Mode, lease: _Lease, limits: RateLimit) -> None:
        asks, debt = [], 0.0
        if lease.requests < 1:
            asks.append(LeaseRequest(subject, mode, "requests", limits.rpm, want=self._slice(limits.rpm)))
        if lease.tokens <= 0:
            debt = -lease.tokens
            lease.tokens += debt  # handed to the authority; charges landing meanwhile stay as new debt
            asks.append(LeaseRequest(subject, mode, "tokens", limits.tpm, want=self._slice(limits.tpm), debit=debt))
        lease.refilling = True
        try:
            grants = await self.source.exchange(asks)
        except BaseException:
            lease.tokens -= debt
            raise
        finally:
            lease.refilling = False
        now = self._clock()
        for ask, grant in zip(asks, grants, strict=True):
            if ask.kind == "requests":
                lease.requests += grant.granted
                lease.level_requests = grant.level
                lease.requests_retry_at = now + grant.retry_after_s if grant.granted == 0 else 0.0
            else:
                lease.tokens += grant.granted
                lease.level_tokens = grant.level
                lease.tokens_retry_at = now + grant.retry_after_s if grant.granted == 0 else 0.0
        lease.used_at = now

    async def debit(self, subject: str, mode: Mode, limits: RateLimit, tokens: int) -> Remaining:
        """Charge ``tokens`` and settle this replica's debt for the subject with the authority in the same call, so
        every replica sees it before the subject's next request (a lazily settled debt would only show here). An
        exchange that fails keeps the debt for the next one."""
        lease = self._leases.get((subject, mode))
        if lease is None:
            lease = self._leases[(subject, mode)] = _Lease(limits=limits)
        lease.tokens -= tokens
        if lease.tokens >= 0:
            return self._remaining(lease)
        debt = -lease.tokens
        lease.tokens = 0.0
        try:
            (grant,) = await self.source.exchange([LeaseRequest(subject, mode, "tokens", limits.tpm, debit=debt)])
        except BaseException:
            lease.tokens -= debt
            raise
        lease.level_tokens = grant.level
        if grant.level < 0:
            lease.tokens_retry_at = self._clock() + (-grant.level + 1) / (limits.tpm / 60.0)
        return self._remaining(lease)

    def charge(self, subject: str, mode: Mode, limits: RateLimit, tokens: int) -> Remaining:
        lease = self._leases.get((subject, mode))
        if lease is None:  # its slice went back meanwhile: the charge becomes debt, settled by the next exchange
            lease = self._leases[(subject, mode)] = _Lease(limits=limits)
        lease.tokens -= tokens
        return self._remaining(lease)

    def remaining(self, subject: str, mode: Mode) -> Remaining:
        lease = self._leases.get((subject, mode))
        return self._remaining(lease) if lease is not None else Remaining(0, 0)

    @staticmethod
    def _remaining(lease: _Lease) -> Remaining:
        return Remaining(
            requests=max(0, int(lease.level_requests) + lease.requests),
            tokens=max(0, int(lease.level_tokens + lease.tokens)),
        )

    async def return_idle(self) -> int:
        """Give slices unused for ``lease_ttl_s`` back to the authority (and settle token debt); run periodically."""
        now = self._clock()
        idle = [(k, le) for k, le in self._leases.items() if now - le.used_at >= self.lease_ttl_s and not le.refilling]
        if not idle:
            return 0
        for key, _ in idle:
            del self._leases[key]
        asks = []
        for (subject, mode), le in idle:
            lim = le.limits
            asks.append(LeaseRequest(subject, mode, "requests", lim.rpm, give_back=float(max(0, le.requests))))
            asks.append(LeaseRequest(
                subject, mode, "tokens", lim.tpm, give_back=max(0.0, le.tokens), debit=max(0.0, -le.tokens)
            ))
        try:
            await self.source.exchange(asks)
        except BaseException:
            for key, le in idle:  # keep them (and their debt) for the next try, merged with any newer lease
                current = self._leases.get(key)
                if current is None:
                    self._leases[key] = le
                else:
                    current.requests += max(0, le.requests)
                    current.tokens += le.tokens
            raise
        return len(idle)
