"""The ingress's admission in-process (no Ray, no HTTP): shedding, per-client concurrency, the gate, the timeout, the
charge, over the real accounts gate, limiter and ledger."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.gate import AccountsConfig, AccountsGate
from classifiers.accounts.keys import AccountStore, Authenticator, Principal
from classifiers.accounts.ratelimit import REQUEST_LIMIT, BudgetAuthority, LeaseLimiter
from classifiers.accounts.usage import UsageLedger, UsageMeter
from classifiers.protocol.errors import (
    InsufficientBalance,
    InvalidInput,
    RateLimited,
    ServiceTimeout,
    ServiceUnavailable,
)
from classifiers.storage.store import LocalDirStore
from deployments.metrics import IngressMetrics
from serve_app.admission import AdmissionControl, InflightLimits, OperationContext


class Setup:
    def __init__(self, tmp_path, *, max_inflight=8, max_inflight_per_client=4, request_timeout_s=5.0, **accounts):
        self.store = AccountStore(LocalDirStore(tmp_path))
        self.ledger = UsageLedger(self.store)
        self.gate = AccountsGate(
            AccountsConfig(require_keys=True, **accounts), auth=Authenticator(self.store, require_keys=True),
            limiter=LeaseLimiter(BudgetAuthority()), meter=UsageMeter(self.ledger),
        )
        metrics = IngressMetrics()
        places = InflightLimits(metrics, max_inflight=max_inflight, max_inflight_per_client=max_inflight_per_client)
        self.admission = AdmissionControl(self.gate, metrics, places, request_timeout_s=request_timeout_s)
        self.headers: list[dict[str, str]] = []

    async def principal(self, name: str, **key) -> tuple[Principal, str]:
        rec, key_text = self.store.create_key(name, **key)
        return await self.gate.principal(f"Bearer {key_text}", None), rec.key_id

    async def spent(self, key_id: str) -> int:
        await self.gate.meter.flush()
        return (await self.ledger.spent([key_id])).get(key_id, 0)

    def run(self, principal: Principal, work, charge=lambda r: r, mode="zeroshot"):
        ctx = OperationContext(principal, mode, "m", 1, rate_headers=self.headers.append)
        return self.admission.run(ctx, work, charge)


async def _value(v):
    return v


async def _held(release: asyncio.Event, started: asyncio.Event | None = None, value: int = 1) -> int:
    if started is not None:
        started.set()
    await release.wait()
    return value


def test_a_success_is_charged_what_it_used_and_gets_its_rate_headers(tmp_path):
    async def scenario():
        s = Setup(tmp_path)
        p, key_id = await s.principal("alice")
        budgets = []

        async def work(ticket):
            budgets.append(ticket.stop_at)
            return 42

        assert await s.run(p, work) == 42
        assert budgets == [500_000]  # the tier's tokens per minute: where counting the request stops
        assert await s.spent(key_id) == 42
        assert s.headers and "X-RateLimit-Remaining-Requests" in s.headers[-1]
        assert s.admission.inflight == 0 and s.admission.shed == {"overloaded": 0, "client_concurrency": 0, "timeouts": 0}

    asyncio.run(scenario())


def test_beyond_max_inflight_a_request_is_shed_with_a_503_before_the_gate(tmp_path):
    async def scenario():
        s = Setup(tmp_path, max_inflight=1)
        a, _ = await s.principal("a")
        b, b_key = await s.principal("b")
        release, started = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(s.run(a, lambda t: _held(release, started)))
        await started.wait()
        with pytest.raises(ServiceUnavailable) as info:
            await s.run(b, lambda t: _value(5))
        assert info.value.status == 503 and s.admission.shed["overloaded"] == 1
        release.set()
        assert await first == 1
        assert await s.run(b, lambda t: _value(5)) == 5  # the capacity is back
        assert await s.spent(b_key) == 5  # the shed request was never charged
        assert s.admission.inflight == 0

    asyncio.run(scenario())


def test_one_client_gets_at_most_max_inflight_per_client_others_are_not_affected(tmp_path):
    async def scenario():
        s = Setup(tmp_path, max_inflight_per_client=1)
        a, _ = await s.principal("a")
        b, _ = await s.principal("b")
        release, started = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(s.run(a, lambda t: _held(release, started)))
        await started.wait()
        with pytest.raises(RateLimited) as info:
            await s.run(a, lambda t: _value(1))
        assert info.value.status == 429 and info.value.code == REQUEST_LIMIT and info.value.retry_after_s == 1.0
        assert s.admission.shed["client_concurrency"] == 1
        assert await s.run(b, lambda t: _value(2)) == 2  # another client is admitted meanwhile
        release.set()
        await first
        assert await s.run(a, lambda t: _value(3)) == 3

    asyncio.run(scenario())


def test_a_request_over_the_timeout_is_a_504_and_never_charged(tmp_path):
    async def scenario():
        s = Setup(tmp_path, request_timeout_s=0.05)
        p, key_id = await s.principal("slow")

        async def work(ticket):
            ticket.done(30)  # charged when submitted, like a /train...
            await asyncio.sleep(5)

        with pytest.raises(ServiceTimeout) as info:
            await s.run(p, work)
        assert info.value.status == 504 and "0.05s" in info.value.detail
        assert s.admission.shed["timeouts"] == 1
        assert await s.spent(key_id) == 0  # ...and taken back
        assert s.headers  # the response still carries the rate headers
        assert s.admission.inflight == 0

    asyncio.run(scenario())


def test_failed_requests_and_replays_are_refunded(tmp_path):
    async def scenario():
        s = Setup(tmp_path)
        p, key_id = await s.principal("c")

        async def refused(ticket):
            ticket.done(10)
            raise InvalidInput("bad")

        with pytest.raises(InvalidInput):
            await s.run(p, refused)

        async def replayed(ticket):
            ticket.done(20)  # submitted: charged...
            return "first response"

        assert await s.run(p, replayed, charge=lambda r: None) == "first response"  # ...paid before: refunded
        assert await s.spent(key_id) == 0
        assert await s.run(p, lambda t: _value(7)) == 7
        assert await s.spent(key_id) == 7

    asyncio.run(scenario())


def test_the_gate_refuses_before_any_work_with_its_headers_and_releases_the_slot(tmp_path):
    async def scenario():
        s = Setup(tmp_path, max_inflight_per_client=1, tiers={"default": {}, "tiny": {"zeroshot": {"rpm": 1, "tpm": 1000}}})
        p, _ = await s.principal("t", tier="tiny")
        calls = []

        async def work(ticket):
            calls.append(1)
            return 1

        await s.run(p, work)
        s.headers.clear()
        with pytest.raises(RateLimited):
            await s.run(p, work)
        assert calls == [1] and s.headers[-1]["X-RateLimit-Remaining-Requests"] == "0"
        assert s.admission.inflight == 0  # the refused request holds no slot...
        spent, _ = await s.principal("spent", balance=5)
        await s.run(spent, lambda t: _value(5))
        with pytest.raises(InsufficientBalance):  # ...nor does one over its balance
            await s.run(spent, work)
        assert calls == [1] and s.admission.inflight == 0

    asyncio.run(scenario())


def test_a_reservation_goes_back_when_the_request_fails_or_is_cancelled_but_a_submitted_train_keeps_its_charge(tmp_path):
    """Tokens reserved before model work (Ticket.admit_tokens) are released when the request then fails, or when
    its client goes away (cancelled): the bucket and the balance are whole again. A /train charged at submission
    keeps its charge when its client goes away: the update is applied anyway."""
    async def scenario():
        s = Setup(tmp_path, tiers={"default": {"zeroshot": {"rpm": 100, "tpm": 600}}})
        p, key_id = await s.principal("r", balance=1000)
        started = asyncio.Event()

        async def reserve_then_fail(ticket):
            await ticket.admit_tokens(400)
            raise InvalidInput("the model refused it")

        with pytest.raises(InvalidInput):
            await s.run(p, reserve_then_fail)

        async def reserve_then_hang(ticket):
            await ticket.admit_tokens(400)
            started.set()
            await asyncio.sleep(60)

        task = asyncio.ensure_future(s.run(p, reserve_then_hang))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert s.gate.limiter.remaining(p.rate_subject, "zeroshot").tokens == 600  # both reservations went back
        assert s.gate.meter.pending_tokens(key_id) == 0

        async def submitted_then_hang(ticket):
            await ticket.admit_tokens(100)
            ticket.done(100)  # the update went to its shard
            started.set()
            await asyncio.sleep(60)

        started.clear()
        task = asyncio.ensure_future(s.run(p, submitted_then_hang, mode="train"))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await s.spent(key_id) == 100 and s.admission.inflight == 0

    asyncio.run(scenario())
