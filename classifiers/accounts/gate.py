"""The accounts gate every request passes: who it is, whether its limits and balance admit it, what it is charged.

Composes :class:`~classifiers.accounts.keys.Authenticator`, :class:`~classifiers.accounts.ratelimit.LeaseLimiter` and
:class:`~classifiers.accounts.usage.UsageMeter` (each built from explicit dependencies, so tests run the gate in-process
against the real limiter and ledger). The ingress calls, per request: ``principal`` (401s), ``admit`` (429, 403
balance) before any model work, then ``Ticket.done(tokens)`` once the response is ready — only successful
requests are charged. No Ray imports.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifiers.accounts.keys import Authenticator, Principal
from classifiers.accounts.ratelimit import Admission, LeaseLimiter, Mode, RateLimit, Remaining, TierLimits
from classifiers.accounts.usage import UsageMeter
from classifiers.protocol.errors import AdminRequired, InsufficientBalance

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
    """An admitted request: its token budget for the embedder, and the charge once it succeeded."""

    gate: "AccountsGate"
    principal: Principal
    mode: Mode
    admission: Admission | None
    token_budget: int | None

    charged: int | None = None

    def done(self, tokens: int) -> None:
        """Charge the request: the limiter's token bucket and the usage ledger. Once; never raises."""
        if self.charged is not None:
            return
        self.charged = tokens
        if self.admission is not None:
            self.admission.charge(tokens)
        self.gate.meter.record(self.principal.subject, self.principal.account_id, self.mode, tokens)

    def refund(self) -> None:
        """Take back a charge made when the work was submitted, once it is certain nothing was applied for it (a
        refused update) or it was paid before (an idempotent replay)."""
        if not self.charged:
            self.charged = None
            return
        if self.admission is not None:
            self.admission.charge(-self.charged)
        self.gate.meter.refund(self.principal.subject, self.principal.account_id, self.mode, self.charged)
        self.charged = None

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
        """The balance (cached), then the rate limits; raises InsufficientBalance / RateLimited."""
        limits = self.config.limits(principal.tier, mode)
        if principal.balance is not None:  # first: a spent key must not use up its account's request budget
            left = await self.meter.balance_left(principal.subject, principal.balance)
            if left <= 0:
                raise InsufficientBalance(
                    f"Insufficient balance: this key's {principal.balance} tokens are spent. Ask the admin for more."
                )
        admission = None
        if self.config.rate_limits:
            admission = await self.limiter.admit(principal.rate_subject, mode, limits)
        return Ticket(self, principal, mode, admission, limits.tpm if self.config.rate_limits else None)

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
