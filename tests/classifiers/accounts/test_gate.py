"""The accounts gate in-process: auth -> limits -> balance -> charge, over the real limiter and ledger (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.gate import AccountsConfig, AccountsGate
from classifiers.accounts.keys import AccountStore, Authenticator
from classifiers.accounts.ratelimit import BudgetAuthority, LeaseLimiter
from classifiers.accounts.usage import UsageLedger, UsageMeter
from classifiers.protocol.errors import AdminRequired, InsufficientBalance, RateLimited
from classifiers.storage.store import LocalDirStore


def run(coro):
    return asyncio.run(coro)


def make_gate(tmp_path, **cfg):
    store = AccountStore(LocalDirStore(tmp_path))
    config = AccountsConfig(require_keys=True, **cfg)
    ledger = UsageLedger(store)
    gate = AccountsGate(
        config, auth=Authenticator(store, require_keys=True), limiter=LeaseLimiter(BudgetAuthority()), meter=UsageMeter(ledger)
    )
    return gate, store, ledger


def test_balance_is_checked_before_work_and_only_successes_are_charged(tmp_path):
    gate, store, ledger = make_gate(tmp_path)
    rec, key = store.create_key("alice", balance=100)
    p = run(gate.principal(f"Bearer {key}", None))
    ticket = run(gate.admit(p, "zeroshot"))
    assert ticket.token_budget == 500_000
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
