"""The usage ledger: tokens and requests charged per subject (key), durable, never in a request's way. No Ray.

Token rules (the product's): zero-shot classify = input tokens + label tokens; few-shot classify = input
tokens; train = input tokens x num_iters; an image counts ``classifiers.images.stream.image_tokens`` (the model's fixed
per-image count, `ModelSpec.image_tokens`). Only successful requests are charged: a request is recorded after its
response is ready, never before, and a failed one never reaches the ledger.

Two halves:

* :class:`UsageMeter`, one per ingress replica: ``record`` adds to an in-memory pending total and never fails;
  a background task sends pending totals to the ledger every ``flush_s``. A send that fails keeps them for the
  next try. The meter also answers the balance check from the ledger's last known total plus what is pending.
* :class:`UsageLedger`, one per service (in the accounts actor): running totals per subject, loaded from the
  store when first touched and persisted every ``flush_s``; a failed persist is retried, never lost while the
  actor lives.

Sends are idempotent. A send that fails may still have been applied (the answer was lost: a timeout, an actor
paused past it, a dropped connection), so a resend must not count it again. Each send carries a
:class:`FlushId` (the meter's id and a sequence number); the meter resends exactly that batch under that id until
one send is acknowledged, and sends nothing newer meanwhile. The ledger keeps, in each subject's entry (so in
the same stored object as the totals, persisted together), the highest sequence number it applied per meter: a
send at or below it is a duplicate and adds nothing. Bound: :data:`MAX_SENDERS` meters per subject, the ones
heard from most recently (a meter is one ingress replica's lifetime).

What can be lost: a replica that dies loses at most its last ``usage_flush_s`` of counts; the ledger actor that
dies loses at most its last ``ledger_flush_s`` (it restarts and reloads from the store, and a resend of what it
lost is applied again, since the applied marks are lost with it). Counts are never charged twice. Balances are
checked against the ledger as this replica last saw it, so a key can overshoot its balance by what all replicas
serve within about one flush interval.
"""
from __future__ import annotations

import asyncio
import copy
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Protocol

from classifiers.accounts.keys import AccountStore
from classifiers.accounts.ratelimit import MODES, Mode
from classifiers.protocol.wire import ModeUsage

logger = logging.getLogger("ray.serve")
MAX_SENDERS = 64  # meters whose last applied flush a ledger entry remembers (most recent first to stay)


@dataclass(frozen=True)
class UsageDelta:
    subject: str
    account_id: str
    mode: Mode
    tokens: int
    requests: int


@dataclass(frozen=True)
class FlushId:
    """Names one batch a meter sends: ``sender`` is the meter (one per replica lifetime), ``seq`` counts its
    batches from 1. A resend of a batch carries the same id, so the ledger can tell it from new usage."""

    sender: str
    seq: int


@dataclass(frozen=True)
class SubjectUsage:
    """What a subject has used, as :meth:`UsageMeter.usage` answers it: typed, so a caller reads fields, never
    the ledger entry's keys (the entry is the stored format, with bookkeeping such as the applied marks)."""

    account_id: str
    tokens: int
    requests: int
    by_mode: dict[str, ModeUsage]


def empty_entry(subject: str, account_id: str) -> dict:
    return {
        "subject": subject, "account_id": account_id, "tokens": 0, "requests": 0, "updated_at": None,
        "by_mode": {m: {"tokens": 0, "requests": 0} for m in MODES},
        "flushes": {},  # sender -> the highest seq applied to this entry (see the module docstring)
    }


class LedgerSink(Protocol):
    """Where a replica's pending usage goes: :class:`UsageLedger` in-process, or the accounts actor."""

    async def add_usage(self, deltas: list[UsageDelta], flush: FlushId | None = None) -> dict[str, int]:
        """Add (once per ``flush`` id: a resend of an applied one adds nothing); returns the new token totals of
        the subjects touched."""

    async def spent(self, subjects: list[str]) -> dict[str, int]:
        """Token totals of these subjects."""

    async def usage(self, subject: str) -> dict:
        """A subject's ledger entry."""


class UsageLedger:
    def __init__(self, store: AccountStore, *, clock: Callable[[], float] = time.time):
        self.store = store
        self._clock = clock
        self._entries: dict[str, dict] = {}
        self._dirty: set[str] = set()

    async def _entry(self, subject: str, account_id: str = "") -> dict:
        e = self._entries.get(subject)
        if e is None:
            e = await self.store.load_ledger(subject) or empty_entry(subject, account_id)
            e = self._entries.setdefault(subject, e)  # a concurrent load of the same subject: keep the first
        return e

    async def add_usage(self, deltas: list[UsageDelta], flush: FlushId | None = None) -> dict[str, int]:
        """Add the deltas, unless ``flush`` says they were applied already (a resend after a lost answer).

        The check and the additions run with no await between them, so two copies of one send arriving together
        (a timed-out one still queued, and its resend) add once."""
        for d in deltas:  # load first, so a failed store read adds nothing (the caller keeps and resends them)
            await self._entry(d.subject, d.account_id)
        now = self._clock()
        applied = {d.subject for d in deltas if flush is None or self._first_time(self._entries[d.subject], flush)}
        for d in deltas:
            if d.subject not in applied:
                continue
            e = self._entries[d.subject]
            e["tokens"] += d.tokens
            e["requests"] += d.requests
            slot = e["by_mode"].setdefault(d.mode, {"tokens": 0, "requests": 0})
            slot["tokens"] += d.tokens
            slot["requests"] += d.requests
            e["account_id"] = e["account_id"] or d.account_id
            e["updated_at"] = now
            self._dirty.add(d.subject)
        if flush is not None:
            for subject in applied:
                self._mark(self._entries[subject], flush)
        return {d.subject: self._entries[d.subject]["tokens"] for d in deltas}

    @staticmethod
    def _first_time(entry: dict, flush: FlushId) -> bool:
        """A meter sends its batches in order and one at a time, so one number per meter tells them apart."""
        return flush.seq > entry.get("flushes", {}).get(flush.sender, 0)

    @staticmethod
    def _mark(entry: dict, flush: FlushId) -> None:
        marks = entry.setdefault("flushes", {})
        marks.pop(flush.sender, None)
        marks[flush.sender] = flush.seq  # most recent last; stored JSON keeps the order
        while len(marks) > MAX_SENDERS:
            marks.pop(next(iter(marks)))

    async def spent(self, subjects: list[str]) -> dict[str, int]:
        return {s: (await self._entry(s))["tokens"] for s in subjects}

    async def usage(self, subject: str) -> dict:
        """A subject's whole ledger entry (totals and per mode), as of what replicas have sent (a copy)."""
        return copy.deepcopy(await self._entry(subject))

    async def flush(self) -> int:
        """Persist changed totals; on failure they stay dirty for the next flush."""
        dirty, self._dirty = self._dirty, set()
        try:
            # deep copies, taken here on the event loop: the store's threads must not see entries being changed
            await self.store.save_ledger([copy.deepcopy(self._entries[s]) for s in dirty])
        except BaseException:
            self._dirty |= dirty
            raise
        return len(dirty)


class UsageMeter:
    def __init__(self, sink: LedgerSink, *, spent_ttl_s: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.sink = sink
        self.spent_ttl_s = spent_ttl_s
        self._clock = clock
        self._pending: dict[tuple[str, str, Mode], list[int]] = {}  # (subject, account, mode) -> [tokens, requests]
        self._spent: dict[str, tuple[int, float]] = {}  # the ledger's totals as last seen, and when
        self._reserved: dict[str, int] = {}  # subject -> tokens of its admitted requests not yet charged or released
        self.failed_flushes = 0
        self.sender = uuid.uuid4().hex  # this meter's name in the ledger's applied marks
        self._seq = 0
        self._unacked: tuple[FlushId, list[UsageDelta]] | None = None  # sent, answer not (yet) seen: resent as is
        self._sending = asyncio.Lock()  # one send at a time (the maintenance loop and a shutdown flush may overlap)

    def record(self, subject: str, account_id: str, mode: Mode, tokens: int) -> None:
        """Charge a successful request. In memory only: cannot fail, cannot slow the request."""
        slot = self._pending.setdefault((subject, account_id, mode), [0, 0])
        slot[0] += tokens
        slot[1] += 1

    async def usage(self, subject: str, account_id: str) -> SubjectUsage:
        """The ledger's entry for a subject with this replica's pending counts added: what the caller has used."""
        e = await self.sink.usage(subject)
        tokens, requests = e["tokens"], e["requests"]
        by_mode = {mode: ModeUsage(**counts) for mode, counts in e["by_mode"].items()}
        for s, mode, t, r in self._not_acknowledged():
            if s == subject:
                tokens += t
                requests += r
                slot = by_mode.setdefault(mode, ModeUsage())
                slot.tokens += t
                slot.requests += r
        return SubjectUsage(account_id=e.get("account_id") or account_id, tokens=tokens, requests=requests,
                            by_mode=by_mode)

    def refund(self, subject: str, account_id: str, mode: Mode, tokens: int) -> None:
        """Take back a charge recorded for a request that turned out not to be chargeable (in memory only)."""
        slot = self._pending.setdefault((subject, account_id, mode), [0, 0])
        slot[0] -= tokens
        slot[1] -= 1

    def reserve(self, subject: str, tokens: int) -> None:
        """Hold an admitted request's counted tokens against the balance until it is charged or fails (in memory
        only): concurrent requests of one key on this replica can then never spend more than its balance."""
        self._reserved[subject] = self._reserved.get(subject, 0) + tokens

    def release(self, subject: str, tokens: int) -> None:
        """Let go of a reservation (the request was charged, or failed)."""
        left = self._reserved.get(subject, 0) - tokens
        if left > 0:
            self._reserved[subject] = left
        else:
            self._reserved.pop(subject, None)

    def pending_tokens(self, subject: str) -> int:
        """Tokens this replica holds against a subject's balance: charged and not yet acknowledged by the ledger,
        and reserved by its requests in flight."""
        return sum(tokens for s, _, tokens, _ in self._not_acknowledged() if s == subject) + self._reserved.get(subject, 0)

    def _not_acknowledged(self):
        """(subject, mode, tokens, requests) this meter holds: pending, and a sent batch whose answer it has not seen
        (which the ledger may hold already: counting it here too errs towards refusing a spent balance early)."""
        for (s, _, mode), (tokens, requests) in self._pending.items():
            yield s, mode, tokens, requests
        for d in self._unacked[1] if self._unacked is not None else ():
            yield d.subject, d.mode, d.tokens, d.requests

    async def balance_left(self, subject: str, balance: int) -> int:
        """Tokens left of a balance: the ledger's total as last seen (re-read after ``spent_ttl_s``, so other
        replicas' usage counts here too) minus what this replica has pending or reserved."""
        seen = self._spent.get(subject)
        if seen is None or self._clock() - seen[1] >= self.spent_ttl_s:
            try:
                totals = await self.sink.spent([subject])
                self._remember(totals)
                seen = (totals[subject], self._clock())
            except Exception as exc:  # noqa: BLE001 - the ledger never fails a request: use what is known
                logger.warning("usage ledger unavailable (%s); balance checked against the last known total", exc)
                seen = seen or (0, self._clock())
        return balance - seen[0] - self.pending_tokens(subject)

    def _remember(self, totals: dict[str, int]) -> None:
        now = self._clock()
        for subject, tokens in totals.items():
            self._spent[subject] = (tokens, now)
        while len(self._spent) > 100_000:  # bounded: forget the oldest
            self._spent.pop(next(iter(self._spent)))

    async def flush(self) -> int:
        """Send pending usage to the ledger; returns how many (subject, mode) totals were acknowledged.

        A failed send may have been applied (only its answer lost), so it is kept *as it was*, under its
        :class:`FlushId`, and resent first next time: never merged with newer usage, which waits for it. The
        ledger recognises a resend of an applied batch and adds nothing."""
        async with self._sending:
            sent = 0
            while True:
                if self._unacked is None:
                    if not self._pending:
                        return sent
                    pending, self._pending = self._pending, {}
                    self._seq += 1
                    deltas = [UsageDelta(s, a, m, v[0], v[1]) for (s, a, m), v in pending.items()]
                    self._unacked = (FlushId(self.sender, self._seq), deltas)
                flush, deltas = self._unacked
                try:
                    totals = await self.sink.add_usage(deltas, flush)
                except BaseException:
                    self.failed_flushes += 1
                    raise
                self._unacked = None
                self._remember(totals)
                sent += len(deltas)
