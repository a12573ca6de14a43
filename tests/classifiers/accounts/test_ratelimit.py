"""The rate limiter: bucket rules, leases that never over-grant across replicas, token debt (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.ratelimit import BudgetAuthority, LeaseLimiter, LeaseRequest, RateLimit
from classifiers.protocol.errors import REQUEST_LIMIT, TOKEN_LIMIT, RateLimited


def run(coro):
    return asyncio.run(coro)


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


DEFAULT_LIMITS = RateLimit(rpm=20, tpm=10**9)


def admitted(limiter, n, subject="acct", mode="fewshot", limits=DEFAULT_LIMITS):
    ok = 0
    for _ in range(n):
        try:
            run(limiter.admit(subject, mode, limits)).charge(1)
            ok += 1
        except RateLimited:
            pass
    return ok


def test_a_burst_gets_exactly_the_bucket_then_the_refill_rate():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    limiter = LeaseLimiter(authority, lease_fraction=0.1, clock=clock)
    assert admitted(limiter, 50) == 20
    clock.t += 30  # half a minute refills half the bucket
    assert admitted(limiter, 50) == 10


def test_several_replicas_together_never_get_more_than_the_limit():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    replicas = [LeaseLimiter(authority, lease_fraction=0.3, clock=clock) for _ in range(4)]
    total = sum(admitted(r, 1) for _ in range(40) for r in replicas)
    assert total == 20


def test_idle_leases_go_back_so_another_replica_can_use_them():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    a, b = (LeaseLimiter(authority, lease_fraction=0.5, lease_ttl_s=2, clock=clock) for _ in range(2))
    assert admitted(a, 1) == 1  # a holds the rest of a 10-request slice
    assert admitted(b, 30) == 10  # b gets only the other half
    clock.t += 2.0
    run(a.return_idle())  # a's unused 9 go back
    clock.t += 1.0  # b asks again once the authority's Retry-After (3 s: one request refills) has passed
    assert admitted(b, 30) == 10  # a's 9 + the one that refilled


def test_separate_buckets_per_subject_and_mode():
    limiter = LeaseLimiter(BudgetAuthority(clock=Clock()), clock=Clock())
    assert admitted(limiter, 30, subject="a") == 20
    assert admitted(limiter, 30, subject="b") == 20
    assert admitted(limiter, 30, subject="a", mode="train") == 20


def test_refusals_name_the_limit_and_when_to_retry():
    clock = Clock()
    limiter = LeaseLimiter(BudgetAuthority(clock=clock), clock=clock)
    admitted(limiter, 20)
    with pytest.raises(RateLimited) as info:
        run(limiter.admit("acct", "fewshot", RateLimit(rpm=20, tpm=10**9)))
    assert info.value.code == REQUEST_LIMIT and info.value.status == 429 and 1 <= info.value.retry_after_s <= 3.01


def test_tokens_are_charged_after_the_fact_and_debt_blocks_until_refilled():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    limiter = LeaseLimiter(authority, lease_fraction=0.1, clock=clock)
    limits = RateLimit(rpm=1000, tpm=600)  # 10 tokens per second
    run(limiter.admit("acct", "zeroshot", limits)).charge(900)  # one big request: 300 into debt
    with pytest.raises(RateLimited) as info:
        run(limiter.admit("acct", "zeroshot", limits))
    assert info.value.code == TOKEN_LIMIT and info.value.retry_after_s >= 30
    clock.t += 29.0
    with pytest.raises(RateLimited):
        run(limiter.admit("acct", "zeroshot", limits))
    clock.t += 2.0  # 310 refilled: the debt is paid
    run(limiter.admit("acct", "zeroshot", limits)).charge(5)


def test_remaining_counts_what_the_authority_and_the_lease_hold():
    clock = Clock()
    limiter = LeaseLimiter(BudgetAuthority(clock=clock), lease_fraction=0.1, clock=clock)
    adm = run(limiter.admit("acct", "fewshot", RateLimit(rpm=20, tpm=1000)))
    rem = adm.charge(40)
    assert rem.requests == 19 and rem.tokens == 960


def test_a_changed_limit_keeps_what_was_spent():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    (g,) = authority.exchange_now([LeaseRequest("s", "train", "requests", 20, want=15)])
    assert g.granted == 15
    (g,) = authority.exchange_now([LeaseRequest("s", "train", "requests", 40, want=100)])
    assert g.granted == 25  # 40 - the 15 already spent


def test_a_failed_exchange_keeps_the_token_debt_for_the_next_one():
    class Flaky(BudgetAuthority):
        down = False

        async def exchange(self, requests):
            if self.down:
                raise ConnectionError("limiter actor restarting")
            return self.exchange_now(requests)

    clock = Clock()
    authority = Flaky(clock=clock)
    limiter = LeaseLimiter(authority, lease_fraction=1.0, clock=clock)
    limits = RateLimit(rpm=1000, tpm=600)
    run(limiter.admit("a", "zeroshot", limits)).charge(900)  # 300 into debt
    authority.down = True
    with pytest.raises(ConnectionError):
        run(limiter.admit("a", "zeroshot", limits))
    authority.down = False
    clock.t += 20  # 200 refilled: still 100 short, because the debt survived the failed exchange
    with pytest.raises(RateLimited):
        run(limiter.admit("a", "zeroshot", limits))


def test_a_refused_client_is_refused_locally_until_retry_after():
    class Counting(BudgetAuthority):
        calls = 0

        async def exchange(self, requests):
            Counting.calls += 1
            return self.exchange_now(requests)

    clock = Clock()
    limiter = LeaseLimiter(Counting(clock=clock), lease_fraction=0.1, clock=clock)
    assert admitted(limiter, 1000, limits=RateLimit(rpm=10, tpm=10**9)) == 10
    assert Counting.calls <= 11  # 10 one-request leases and one refusal: not one call per refused request
    clock.t += 6.0  # one request refilled
    assert admitted(limiter, 5, limits=RateLimit(rpm=10, tpm=10**9)) == 1


def test_return_idle_leaves_a_lease_that_is_refilling_alone():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    limiter = LeaseLimiter(authority, lease_fraction=0.5, lease_ttl_s=2, clock=clock)

    async def race():
        gate = asyncio.Event()

        class Slow:
            async def exchange(self, requests):
                await gate.wait()
                return authority.exchange_now(requests)

        limiter.source = Slow()
        admit = asyncio.ensure_future(limiter.admit("s", "train", RateLimit(rpm=20, tpm=10**9)))
        await asyncio.sleep(0)
        clock.t += 5  # the lease looks idle while its refill is in flight
        assert await limiter.return_idle() == 0
        gate.set()
        await admit

    run(race())
    assert limiter.remaining("s", "train").requests >= 9


def test_a_reservation_takes_the_whole_count_or_nothing_and_tops_up_a_short_lease():
    """Tokens are reserved before model work: a count larger than this replica's slice is topped up from the
    authority in one exchange; a count the bucket cannot hold now is refused whole (nothing taken), with the
    time until it can; until then the subject is refused locally, without being counted again."""
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    limiter = LeaseLimiter(authority, lease_fraction=0.1, clock=clock)
    limits = RateLimit(rpm=1000, tpm=600)  # 10 tokens per second; slices of 60
    adm = run(limiter.admit("a", "zeroshot", limits))
    run(adm.reserve(500))  # 60 in the slice, 440 more (plus a new slice) in one exchange
    assert limiter.remaining("a", "zeroshot").tokens == 100
    adm = run(limiter.admit("a", "zeroshot", limits))
    with pytest.raises(RateLimited) as info:
        run(adm.reserve(300))  # 100 left: refused whole, nothing taken
    assert info.value.code == TOKEN_LIMIT and 19 <= info.value.retry_after_s <= 21 and "counts 300 tokens" in info.value.detail
    with pytest.raises(RateLimited):
        run(limiter.admit("a", "zeroshot", limits))  # refused locally until the 300 are there
    clock.t += 20.5
    run(run(limiter.admit("a", "zeroshot", limits)).reserve(300))
    other = LeaseLimiter(authority, clock=clock)  # nothing was over-granted: the bucket is empty for everyone
    with pytest.raises(RateLimited):
        run(run(other.admit("a", "zeroshot", limits)).reserve(20))


def test_a_grant_with_a_need_is_all_or_nothing_at_the_authority():
    clock = Clock()
    authority = BudgetAuthority(clock=clock)
    (g,) = authority.exchange_now([LeaseRequest("s", "zeroshot", "tokens", 600, want=700, need=650)])
    assert g.granted == 0 and g.level == 600 and 4.9 <= g.retry_after_s <= 5.1  # 50 more tokens: 5 s
    (g,) = authority.exchange_now([LeaseRequest("s", "zeroshot", "tokens", 600, want=700, need=500)])
    assert g.granted == 600 and g.level == 0  # at least the need: as much of the want as there is
