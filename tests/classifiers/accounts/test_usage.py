"""The usage ledger: exact totals, durable, a failing store never loses counts or fails a request (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.keys import AccountStore
from classifiers.accounts.usage import MAX_SENDERS, FlushId, UsageDelta, UsageLedger, UsageMeter
from classifiers.protocol.errors import ServiceUnavailable
from classifiers.storage.store import LocalDirStore


def run(coro):
    return asyncio.run(coro)


def test_replicas_add_up_and_the_totals_survive_a_restart(tmp_path):
    ledger = UsageLedger(AccountStore(LocalDirStore(tmp_path)))
    a, b = UsageMeter(ledger), UsageMeter(ledger)
    a.record("k1", "acct-1", "zeroshot", 100)
    a.record("k1", "acct-1", "train", 50)
    b.record("k1", "acct-1", "zeroshot", 7)
    b.record("k2", "acct-2", "fewshot", 3)
    run(a.flush()), run(b.flush()), run(ledger.flush())
    fresh = UsageLedger(AccountStore(LocalDirStore(tmp_path)))  # the actor restarted
    assert run(fresh.spent(["k1", "k2", "never"])) == {"k1": 157, "k2": 3, "never": 0}
    entry = AccountStore(LocalDirStore(tmp_path)).read_ledger("k1")
    assert entry["requests"] == 3 and entry["by_mode"]["zeroshot"] == {"tokens": 107, "requests": 2}
    assert entry["account_id"] == "acct-1"


def test_a_failing_store_keeps_counts_until_it_recovers(tmp_path):
    root = tmp_path / "store"
    ledger = UsageLedger(AccountStore(LocalDirStore(root)))
    meter = UsageMeter(ledger)
    meter.record("k1", "a", "zeroshot", 10)
    run(meter.flush())
    (root / "accounts").mkdir(parents=True, exist_ok=True)
    (root / "accounts" / "ledger").write_bytes(b"")  # a file where the ledger's folder must be: every write fails
    with pytest.raises(ServiceUnavailable):  # a retryable 503 to anyone who waits on it, never a 500
        run(ledger.flush())
    meter.record("k1", "a", "zeroshot", 5)  # recording never touches the store
    run(meter.flush())
    (root / "accounts" / "ledger").unlink()  # the store recovers
    assert run(ledger.flush()) == 1
    assert AccountStore(LocalDirStore(root)).read_ledger("k1")["tokens"] == 15


def test_a_failed_send_to_the_ledger_is_resent_not_lost():
    class Down:
        def __init__(self):
            self.up = False
            self.got = []

        async def add_usage(self, deltas, flush=None):
            if not self.up:
                raise ConnectionError("ledger down")
            self.got.extend(deltas)
            return {d.subject: sum(x.tokens for x in self.got if x.subject == d.subject) for d in deltas}

        async def spent(self, subjects):
            return {s: 0 for s in subjects}

    sink = Down()
    meter = UsageMeter(sink)
    meter.record("k", "a", "train", 40)
    try:
        run(meter.flush())
    except ConnectionError:
        pass
    meter.record("k", "a", "train", 2)
    sink.up = True
    run(meter.flush())
    assert sum(d.tokens for d in sink.got) == 42 and sum(d.requests for d in sink.got) == 2 and meter.failed_flushes == 1


def test_balance_left_counts_the_ledger_and_what_is_pending(tmp_path):
    now = [0.0]
    ledger = UsageLedger(AccountStore(LocalDirStore(tmp_path)))
    a = UsageMeter(ledger, spent_ttl_s=2.0, clock=lambda: now[0])
    b = UsageMeter(ledger, spent_ttl_s=2.0, clock=lambda: now[0])
    assert run(a.balance_left("k", 100)) == 100
    a.record("k", "acct", "zeroshot", 30)
    assert run(a.balance_left("k", 100)) == 70
    b.record("k", "acct", "zeroshot", 50)
    run(b.flush())
    now[0] = 2.0  # a re-reads the ledger: b's usage counts
    assert run(a.balance_left("k", 100)) == 20


class LostAnswers:
    """The real ledger behind a link that loses answers: each send is applied, then its answer is lost (raised as
    the timeout a caller sees) while ``lose`` is set. What a frozen or slow accounts actor does to a replica."""

    def __init__(self, ledger: UsageLedger):
        self.ledger, self.lose, self.sends = ledger, True, 0

    async def add_usage(self, deltas, flush=None):
        self.sends += 1
        totals = await self.ledger.add_usage(deltas, flush)
        if self.lose:
            raise ServiceUnavailable("the accounts service is slow to answer; retry shortly")
        return totals

    async def spent(self, subjects):
        return await self.ledger.spent(subjects)

    async def usage(self, subject):
        return await self.ledger.usage(subject)


def test_a_send_applied_but_unanswered_is_resent_and_counted_once(tmp_path):
    ledger = UsageLedger(AccountStore(LocalDirStore(tmp_path)))
    link = LostAnswers(ledger)
    meter = UsageMeter(link)
    meter.record("k", "a", "train", 40)
    meter.record("j", "b", "zeroshot", 5)
    for _ in range(3):  # applied each time, answered never: the meter resends the same batch
        with pytest.raises(ServiceUnavailable):
            run(meter.flush())
    meter.record("k", "a", "train", 2)  # newer usage waits for the unanswered batch, never merges into it
    used = run(meter.usage("k", "a"))
    assert used.tokens == 40 + 40 + 2  # the ledger's 40, and the 40 + 2 not acknowledged
    assert (used.requests, used.by_mode["train"].tokens, used.account_id) == (3, 82, "a")
    link.lose = False
    assert run(meter.flush()) == 3  # the resend (2 subjects), then the newer batch
    assert link.sends == 5 and meter.failed_flushes == 3
    assert run(ledger.spent(["k", "j"])) == {"k": 42, "j": 5}
    assert run(ledger.usage("k"))["requests"] == 2
    run(ledger.flush())
    fresh = UsageLedger(AccountStore(LocalDirStore(tmp_path)))  # the actor restarted: the marks were stored too
    batch = [UsageDelta("k", "a", "train", 40, 1)]
    assert run(fresh.add_usage(batch, FlushId(meter.sender, 1))) == {"k": 42}  # a very late resend: nothing added
    assert run(fresh.add_usage(batch, FlushId(meter.sender, 3))) == {"k": 82}  # a new batch: added


def test_two_copies_of_one_send_arriving_together_add_once(tmp_path):
    ledger = UsageLedger(AccountStore(LocalDirStore(tmp_path)))
    batch, flush = [UsageDelta("k", "a", "fewshot", 7, 1)], FlushId("replica-1", 1)

    async def both():
        return await asyncio.gather(ledger.add_usage(batch, flush), ledger.add_usage(batch, flush))

    assert run(both()) == [{"k": 7}, {"k": 7}]
    assert run(ledger.add_usage(batch, FlushId("replica-2", 1))) == {"k": 14}  # another replica's first send


def test_the_ledger_remembers_a_bounded_number_of_senders(tmp_path):
    ledger = UsageLedger(AccountStore(LocalDirStore(tmp_path)))
    for i in range(MAX_SENDERS + 5):
        run(ledger.add_usage([UsageDelta("k", "a", "zeroshot", 1, 1)], FlushId(f"replica-{i}", 1)))
    marks = run(ledger.usage("k"))["flushes"]
    assert len(marks) == MAX_SENDERS and "replica-0" not in marks and f"replica-{MAX_SENDERS + 4}" in marks
