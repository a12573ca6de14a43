"""How an embedder replica shares its model: the fair continuous-batching queue in front of ``@serve.batch``
(:class:`FairTurns`), and what batching achieved (:class:`BatchStats`). No Ray: one event loop's state."""
from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass


@dataclass
class _Waiter:
    tenant: str
    cost: int
    start: float  # its start tag: the virtual time at which it may be served (start-time fair queueing)
    seq: int
    let_in: asyncio.Future


class FairTurns:
    """Continuous batching in front of ``@serve.batch``, shared fairly between tenants and bounded in tokens.

    Requests that arrive while earlier ones are at the model wait; once those are answered, the next group is let
    in together (so each batch is what waited during the previous model call, and an idle model starts at once).

    Why not let in everyone who waited: a tenant's big request (its ingress chunks of up to
    ``classifiers.embedding.vectors.CHUNK_TOKENS`` tokens, two at a time) would join every batch, and another
    tenant's one-input request would wait behind all of it. Instead each group holds at most ``max_tokens`` tokens
    (one long text over it still goes, alone) and ``max_requests`` requests, chosen by start-time fair queueing over
    tokens: a request's start tag is the later of the current virtual time and its tenant's previous finish tag, so
    a tenant that has just been served a lot waits behind tenants that have not. A one-input request therefore
    waits at most for the model call running when it arrived, then goes in the next group, never behind a large
    batch that formed after it arrived.

    A group is let in when the last request of the previous group leaves (answered, failed or cancelled), so a
    request that never reaches the model cannot hold the door shut. One instance per replica and model, shared by
    every batched method that calls the model (texts and images of a CLIP replica take turns). One event loop;
    not thread-safe."""

    def __init__(self, max_tokens: int, max_requests: int) -> None:
        self.max_tokens = max(1, max_tokens)
        self.max_requests = max(1, max_requests)
        self.inside = 0  # requests let in and not yet answered
        self._waiting: list[_Waiter] = []
        self._finish: dict[str, float] = {}  # tenant -> finish tag of its last request (pruned once passed)
        self._vtime = 0.0
        self._seq = 0

    @contextlib.asynccontextmanager
    async def turn(self, tenant: str = "", cost: int = 1):
        waiter = self._enqueue(tenant, max(1, cost))
        if self.inside or len(self._waiting) > 1:
            try:
                await waiter.let_in
            except asyncio.CancelledError:
                if waiter.let_in.done() and not waiter.let_in.cancelled():
                    self._leave()  # let in, then cancelled before it ran: its place in the group is freed
                else:  # still waiting (or already dropped by _let_in_next_group): it leaves no trace
                    self._waiting = [w for w in self._waiting if w is not waiter]
                raise
        else:
            self._waiting.remove(waiter)
            self._vtime = max(self._vtime, waiter.start)
            self.inside += 1
        try:
            yield
        finally:
            self._leave()

    def _enqueue(self, tenant: str, cost: int) -> _Waiter:
        start = max(self._vtime, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + cost
        self._seq += 1
        waiter = _Waiter(tenant, cost, start, self._seq, asyncio.get_running_loop().create_future())
        self._waiting.append(waiter)
        return waiter

    def _leave(self) -> None:
        self.inside -= 1
        if not self.inside and self._waiting:
            self._let_in_next_group()

    def _let_in_next_group(self) -> None:
        # A waiter whose task was cancelled has a cancelled future before its task runs its handler: never let in
        # (it would take a place nobody gives back).
        self._waiting = [w for w in self._waiting if not w.let_in.done()]
        if not self._waiting:
            return
        order = sorted(self._waiting, key=lambda w: (w.start, w.seq))
        group: list[_Waiter] = []
        tokens = 0
        for w in order:
            if group and (len(group) >= self.max_requests or tokens + w.cost > self.max_tokens):
                break
            group.append(w)
            tokens += w.cost
        self._vtime = max(self._vtime, group[-1].start)
        chosen = {id(w) for w in group}
        self._waiting = [w for w in self._waiting if id(w) not in chosen]
        self.inside += len(group)
        for w in group:
            w.let_in.set_result(None)
        # Finish tags at or below the virtual time say nothing any more (a tenant's next start is the virtual time).
        if len(self._finish) > 4 * (len(self._waiting) + self.inside) + 64:
            waiting = {w.tenant for w in self._waiting}
            self._finish = {t: f for t, f in self._finish.items() if f > self._vtime or t in waiting}

    @property
    def waiting(self) -> int:
        return len(self._waiting)


class BatchStats:
    """What batching achieved: how many requests and items (texts or images) each model call carried."""

    def __init__(self, item: str = "texts"):
        self.item = item
        self.batches = 0
        self.requests = 0
        self.items = 0
        self.max_requests_in_batch = 0
        self.histogram: dict[int, int] = {}  # requests per batch -> number of batches
        self.threads: dict[int, int] = {}  # engine threads of a model call -> number of calls
        self.model_cpu_s = 0.0

    def add_call(self, threads: int) -> None:
        """A model call ran on ``threads`` engine threads (the replica's thread policy chose them)."""
        self.threads[threads] = self.threads.get(threads, 0) + 1

    def add_model_cpu(self, seconds: float) -> None:
        """CPU the process spent during model calls (process time, so the engine's own threads count; the
        replica's other threads meanwhile count too, a small overstatement). The bench splits a replica's CPU
        into model calls and the rest with it (bench/cpu.py)."""
        self.model_cpu_s += seconds

    def record(self, items_per_request: list[int]) -> None:
        n = len(items_per_request)
        self.batches += 1
        self.requests += n
        self.items += sum(items_per_request)
        self.max_requests_in_batch = max(self.max_requests_in_batch, n)
        self.histogram[n] = self.histogram.get(n, 0) + 1

    def snapshot(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            self.item: self.items,
            "max_requests_in_batch": self.max_requests_in_batch,
            "mean_requests_per_batch": self.requests / self.batches if self.batches else 0.0,
            "requests_per_batch_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
            "calls_per_thread_count": {str(k): v for k, v in sorted(self.threads.items())},
            "model_cpu_s": self.model_cpu_s,
        }
