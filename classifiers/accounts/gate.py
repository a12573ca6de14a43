"""The accounts gate every request passes: who it is, whether its limits and balance admit it, what it is charged.

Composes :class:`~classifiers.accounts.keys.Authenticator`, :class:`~classifiers.accounts.ratelimit.LeaseLimiter` and
:class:`~classifiers.accounts.usage.UsageMeter` (each built from explicit dependencies, so tests run the gate in-process
against the real limiter and ledger). The ingress calls, per request: ``principal`` (401s), ``admit`` (429, 403
balance: one request), then the service counts the request's tokens and calls ``Ticket.admit_tokens`` (429, 403:
its tokens reserved) before any model work, then ``Ticket.done(tokens)`` once the response is ready — only
successful requests are charged. No Ray imports.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.accounts.keys import Authenticator, Principal
from classifiers.accounts.ratelimit import Admission, LeaseLimiter, Mode, RateLimit, Remaining, TierLimits
from classifiers.accounts.usage import UsageMeter
from classifiers.protocol.errors import TOKEN_LIMIT, AdminRequired, InsufficientBalance, RateLimited

logger = logging.getLogger("ray.serve")


class AccountsConfig(BaseModel):
    """API keys, rate limits and the usage ledger (the ingress's gate and the accounts actor behind it)."""

    model_config = ConfigDict(extra="forbid")

    require_keys: bool = Field(
        default=False,
        description="Every /v1/* route needs `Authorization: Bearer <key>` (keys from ./scripts/keys). Off: anonymous "
        "mode, every caller is one anonymous account.",
    )
    allow_anonymous: bool = Field(
        default=False,
        description="Allow anonymous mode for clients on other hosts. Off: without keys the service answers loopback "
        "clients only (403 to others), and python -m serve_app refuses to start on a non-loopback host.",
    )
    rate_limits: bool = Field(default=True, description="Enforce the tiers' requests/tokens per minute (per IP when anonymous).")
    tiers: dict[str, TierLimits] = Field(
        default_factory=lambda: {"default": TierLimits()},
        description="Rate-limit tiers by name; a key's tier picks one (`default` if the key names none). "
        "Defaults: Jina's (zero-shot 200 RPM & 500k TPM; few-shot and train 20 RPM & 200k TPM).",
    )
    key_cache_ttl_s: float = Field(
        default=2.0, gt=0, description="How long a replica trusts a key record: a new or revoked key takes effect within it."
    )
    lease_fraction: float = Field(
        default=0.1, gt=0, le=1,
        description="Share of a limit one replica takes from the accounts actor at a time (one remote call per share).",
    )
    lease_ttl_s: float = Field(default=2.0, gt=0, description="Unused shares go back to the actor after this long.")
    usage_flush_s: float = Field(
        default=1.0, gt=0, description="How often a replica sends its pending usage to the ledger (at most this is lost if it dies)."
    )
    ledger_flush_s: float = Field(
        default=2.0, gt=0, description="How often the ledger persists totals to the store (at most this is lost if it dies)."
    )
    num_cpus: float = Field(default=0.05, ge=0, description="CPU reserved for the accounts actor.")

    @model_validator(mode="after")
    def _default_tier(self):
        if "default" not in self.tiers:
            raise ValueError("accounts.tiers must define a `default` tier (anonymous callers and keys without a tier use it)")
        return self

    def limits(self, tier: str, mode: Mode) -> RateLimit:
        return (self.tiers.get(tier) or self.tiers["default"]).of(mode)


@dataclass
class Ticket:
    """An admitted request: the most tokens it may count, the reservation of its counted tokens before any model
    work (:meth:`admit_tokens`), and its charge once it succeeded (:meth:`done`) or nothing (:meth:`refund`).

    It is the core's ``TokenBudget`` (``classifiers.embedding.tokens``): the services count a request's tokens up to
    :attr:`stop_at`, then admit the count, then embed."""

    gate: "AccountsGate"
    principal: Principal
    mode: Mode
    admission: Admission | None
    limits: RateLimit
    balance_left: int | None = None  # of the key's balance when admitted (None: no balance)

    reserved: int = 0  # tokens reserved by admit_tokens, not yet charged or released
    charged: int | None = None

    @property
    def stop_at(self) -> int | None:
        """The most tokens this request may count: above its tokens-per-minute limit or the balance left it can
        never be admitted, so counting stops there (None: no limit applies)."""
        bounds = [b for b in (self.limits.tpm if self.admission is not None else None, self.balance_left) if b is not None]
        return min(bounds) if bounds else None

    async def over_limit(self, at_least: int) -> RateLimited | InsufficientBalance:
        """The refusal of a request counted past :attr:`stop_at`. The tokens counted use the token rate limit
        (never the balance or the usage): counting is work, and a client must not make the service count for free.
        They are settled with the accounts actor at once, so every ingress replica sees them (a debt parked on this
        replica's lease would let the key's next request through another replica)."""
        if self.admission is not None:
            await self.admission.debit(at_least)
        if self.balance_left is not None and at_least > self.balance_left and (
            self.admission is None or self.balance_left < self.limits.tpm
        ):
            return InsufficientBalance(
                f"Insufficient balance: this request counts at least {at_least} tokens and this key has "
                f"{max(0, self.balance_left)} left. Ask the admin for more, or send a smaller request."
            )
        return RateLimited(
            f"This request counts at least {at_least} tokens, over your limit of {self.limits.tpm} tokens per minute "
            f"for {self.mode}: split it into smaller requests.", code=TOKEN_LIMIT, retry_after_s=60.0,
        )

    async def admit_tokens(self, tokens: int) -> None:
        """Reserve the request's counted tokens before its model work, all or nothing: against the key's balance
        (what this replica's other requests in flight reserved counts too), then the token rate limit. Raises the
        refusal; a refused request holds nothing."""
        stop = self.stop_at
        if stop is not None and tokens > stop:
            raise await self.over_limit(tokens)
        subject = self.principal.subject
        if self.principal.balance is not None:
            left = await self.gate.meter.balance_left(subject, self.principal.balance)
            if tokens > left:
                self.balance_left = left
                raise await self.over_limit(tokens)
            self.gate.meter.reserve(subject, tokens)
        try:
            if self.admission is not None:
                await self.admission.reserve(tokens)
        except BaseException:
            if self.principal.balance is not None:
                self.gate.meter.release(subject, tokens)
            raise
        self.reserved += tokens

    def done(self, tokens: int) -> None:
        """Charge the request: the limiter's token bucket (beyond its reservation) and the usage ledger. Once;
        never raises."""
        if self.charged is not None:
            return
        self.charged = tokens
        if self.admission is not None:
            self.admission.charge(tokens - self.reserved)
        self._release()
        self.gate.meter.record(self.principal.subject, self.principal.account_id, self.mode, tokens)

    def refund(self) -> None:
        """The request failed, or was paid before (an idempotent replay): take back its charge, made when the work
        was submitted, or release its reservation, so it costs nothing."""
        if self.charged is None:
            if self.admission is not None and self.reserved:
                self.admission.charge(-self.reserved)
            self._release()
            return
        if self.admission is not None:
            self.admission.charge(-self.charged)
        if self.charged:
            self.gate.meter.refund(self.principal.subject, self.principal.account_id, self.mode, self.charged)
        self.charged = None

    def _release(self) -> None:
        if self.reserved and self.principal.balance is not None:
            self.gate.meter.release(self.principal.subject, self.reserved)
        self.reserved = 0

    def headers(self) -> dict[str, str]:
        return rate_headers(self.admission.remaining) if self.admission is not None else {}


def rate_headers(remaining: Remaining) -> dict[str, str]:
    return {
        "X-RateLimit-Remaining-Requests": str(remaining.requests),
        "X-RateLimit-Remaining-Tokens": str(remaining.tokens),
    }


class AccountsGate:
    def __init__(self, config: AccountsConfig, *, auth: Authenticator, limiter: LeaseLimiter, meter: UsageMeter):
        self.config = config
        self.auth = auth
        self.limiter = limiter
        self.meter = meter

    async def principal(self, authorization: str | None, client_ip: str | None) -> Principal:
        return await self.auth.authenticate(authorization, client_ip)

    def require_admin(self, principal: Principal) -> None:
        if self.config.require_keys and not principal.admin:
            raise AdminRequired("This route needs an admin key (./scripts/keys create --admin).")

    async def admit(self, principal: Principal, mode: Mode) -> Ticket:
        """The balance (cached), then the rate limits: one request, and a token bucket that is not spent. Raises
        InsufficientBalance / RateLimited. The request's tokens are admitted once counted (Ticket.admit_tokens)."""
        limits = self.config.limits(principal.tier, mode)
        left = None
        if principal.balance is not None:  # first: a spent key must not use up its account's request budget
            left = await self.meter.balance_left(principal.subject, principal.balance)
            if left <= 0:
                raise InsufficientBalance(
                    f"Insufficient balance: this key's {principal.balance} tokens are spent. Ask the admin for more."
                )
        admission = None
        if self.config.rate_limits:
            admission = await self.limiter.admit(principal.rate_subject, mode, limits)
        return Ticket(self, principal, mode, admission, limits, balance_left=left)

    def refused_headers(self, principal: Principal, mode: Mode) -> dict[str, str]:
        """The Remaining headers for a request refused before it had a ticket (a 429)."""
        if not self.config.rate_limits:
            return {}
        return rate_headers(self.limiter.remaining(principal.rate_subject, mode))

    async def maintain(self) -> None:
        """One round of the background work: pending usage to the ledger, idle leases back to the actor.
        Failures are logged and retried next round (pending usage and leases are kept): never a request's."""
        for step in (self.meter.flush, self.limiter.return_idle):
            try:
                await step()
            except Exception as exc:  # noqa: BLE001
                logger.warning("accounts: %s failed (%s: %s); retrying next round", step.__name__, type(exc).__name__, exc)
