"""The accounts gate in-process: auth -> limits -> balance -> charge, over the real limiter and ledger (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.gate import AccountsConfig
from classifiers.protocol.errors import AdminRequired, InsufficientBalance, RateLimited
from tests.accounts_fixture import make_gate


def run(coro):
    return asyncio.run(coro)


def test_balance_is_checked_before_work_and_only_successes_are_charged(tmp_path):
    gate, store, ledger = make_gate(tmp_path)
    rec, key = store.create_key("alice", balance=100)
    p = run(gate.principal(f"Bearer {key}", None))
    ticket = run(gate.admit(p, "zeroshot"))
    assert ticket.stop_at == 100  # the balance left, below the 500k tokens per minute
    run(gate.admit(p, "zeroshot"))  # admitted, then failed: never charged
    ticket.done(60)
    run(gate.admit(p, "zeroshot")).done(40)
    with pytest.raises(InsufficientBalance) as info:
        run(gate.admit(p, "zeroshot"))
    assert info.value.status == 403 and info.value.code == "AUTHZ_INSUFFICIENT_BALANCE"
    run(gate.meter.flush())
    assert run(ledger.spent([rec.key_id])) == {rec.key_id: 100}


def test_tiers_pick_the_limits_and_admin_routes_need_an_admin_key(tmp_path):
    gate, store, _ = make_gate(tmp_path, tiers={"default": {}, "tiny": {"train": {"rpm": 2, "tpm": 1000}}})
    _, tiny = store.create_key("t", tier="tiny")
    _, admin = store.create_key("ops", admin=True)
    p = run(gate.principal(f"Bearer {tiny}", None))
    run(gate.admit(p, "train")), run(gate.admit(p, "train"))
    with pytest.raises(RateLimited):
        run(gate.admit(p, "train"))
    run(gate.admit(p, "fewshot"))  # other modes keep their own (default) buckets
    with pytest.raises(AdminRequired):
        gate.require_admin(p)
    gate.require_admin(run(gate.principal(f"Bearer {admin}", None)))


def test_config_needs_a_default_tier():
    with pytest.raises(ValueError):
        AccountsConfig(tiers={"gold": {}})


def test_a_refund_takes_the_charge_back_and_a_spent_key_does_not_use_its_accounts_requests(tmp_path):
    gate, store, ledger = make_gate(tmp_path, tiers={"default": {"train": {"rpm": 3, "tpm": 10**6}}})
    rec, key = store.create_key("a", balance=50)
    rec2, key2 = store.create_key("b", account_id=rec.account_id)  # same account, no balance
    p, p2 = run(gate.principal(f"Bearer {key}", None)), run(gate.principal(f"Bearer {key2}", None))
    t = run(gate.admit(p, "train"))
    t.done(40)  # charged at submission...
    t.refund()  # ...and taken back: the update was a replay
    run(gate.admit(p, "train")).done(60)  # the balance is spent now
    for _ in range(5):
        with pytest.raises(InsufficientBalance):
            run(gate.admit(p, "train"))
    run(gate.admit(p2, "train"))  # the account's third request of the minute is still there for its other key
    run(gate.meter.flush())
    assert run(ledger.spent([rec.key_id])) == {rec.key_id: 60}
    assert run(ledger.usage(rec.key_id))["requests"] == 1


def test_counted_tokens_are_reserved_so_concurrent_requests_never_overspend_a_balance(tmp_path):
    """One replica, one key with 100 tokens: requests admitted together reserve their counts before any model
    work, so the third of three 40-token requests in flight is refused; what a success used is charged once and a
    failure's reservation goes back."""
    gate, store, ledger = make_gate(tmp_path)
    rec, key = store.create_key("alice", balance=100)
    p = run(gate.principal(f"Bearer {key}", None))
    a, b, c = (run(gate.admit(p, "zeroshot")) for _ in range(3))
    run(a.admit_tokens(40))
    run(b.admit_tokens(40))
    with pytest.raises(InsufficientBalance) as info:
        run(c.admit_tokens(40))
    assert "at least 40 tokens" in info.value.detail and "20 left" in info.value.detail
    b.refund()  # b failed: its 40 are free again
    c = run(gate.admit(p, "zeroshot"))
    run(c.admit_tokens(40))
    a.done(40)
    c.done(40)
    run(gate.meter.flush())
    assert run(ledger.spent([rec.key_id])) == {rec.key_id: 80}
    d = run(gate.admit(p, "zeroshot"))
    with pytest.raises(InsufficientBalance):
        run(d.admit_tokens(21))


def test_a_count_over_the_token_limit_is_refused_and_what_was_counted_uses_the_bucket(tmp_path):
    """A request counted past its tokens-per-minute limit can never be admitted: 429 naming its count as a lower
    bound, and the counted tokens are debited from the bucket (the next request waits for the refill), so sending
    oversized requests cannot make the service count for free."""
    gate, store, _ = make_gate(tmp_path, tiers={"default": {"zeroshot": {"rpm": 100, "tpm": 600}}})
    _, key = store.create_key("bob")
    p = run(gate.principal(f"Bearer {key}", None))
    t = run(gate.admit(p, "zeroshot"))
    assert t.stop_at == 600
    refusal = run(t.over_limit(601))
    assert isinstance(refusal, RateLimited) and refusal.code == "RATE_TOKEN_LIMIT_EXCEEDED"
    assert "at least 601 tokens" in refusal.detail and "split it" in refusal.detail
    with pytest.raises(RateLimited) as info:
        run(gate.admit(p, "zeroshot"))  # the bucket is in debt now: refused before any counting
    assert info.value.code == "RATE_TOKEN_LIMIT_EXCEEDED"
