"""The real accounts gate in-process (``classifiers/accounts``: keys, the lease limiter, the usage ledger, no Ray),
for tests of the core that need what a request may spend (a ``Ticket``, the services' ``TokenBudget``)."""
from __future__ import annotations

import asyncio

from classifiers.accounts.gate import AccountsConfig, AccountsGate, Ticket
from classifiers.accounts.keys import AccountStore, Authenticator
from classifiers.accounts.ratelimit import BudgetAuthority, LeaseLimiter, Mode
from classifiers.accounts.usage import UsageLedger, UsageMeter
from classifiers.storage.store import LocalDirStore


def make_gate(tmp_path, **config) -> tuple[AccountsGate, AccountStore, UsageLedger]:
    store = AccountStore(LocalDirStore(tmp_path))
    ledger = UsageLedger(store)
    gate = AccountsGate(
        AccountsConfig(require_keys=True, **config), auth=Authenticator(store, require_keys=True),
        limiter=LeaseLimiter(BudgetAuthority()), meter=UsageMeter(ledger),
    )
    return gate, store, ledger


def ticket(tmp_path, mode: Mode, *, tpm: int = 10**9, balance: int | None = None) -> Ticket:
    """An admitted request of a new key with ``tpm`` tokens per minute in ``mode`` (and ``balance``, if given)."""
    gate, store, _ = make_gate(tmp_path, tiers={"default": {mode: {"rpm": 1000, "tpm": tpm}}})
    principal = asyncio.run(gate.principal(f"Bearer {store.create_key('k', balance=balance)[1]}", None))
    return asyncio.run(gate.admit(principal, mode))
