"""The fair continuous-batching queue in front of ``@serve.batch`` (FairTurns) and the batch statistics."""
import asyncio

import pytest

from classifiers.embedding.turns import BatchStats, FairTurns


def test_batch_stats_histogram():
    s = BatchStats()
    s.record([1, 2])
    s.record([1])
    snap = s.snapshot()
    assert snap["batches"] == 2 and snap["requests"] == 3 and snap["texts"] == 4
    assert snap["max_requests_in_batch"] == 2 and snap["requests_per_batch_histogram"] == {"1": 1, "2": 1}


class _Batcher:
    """How ``@serve.batch`` with no timer behaves (ray/serve/batching.py): a loop task closes a batch as soon as its
    first request is queued, taking whatever else is queued at that moment, and only then waits for the model
    (one call at a time). The stand-in is for Serve's batcher; the thing under test is FairTurns."""

    def __init__(self, call_s: float):
        self.call_s = call_s
        self.queue: asyncio.Queue = asyncio.Queue()
        self.batches: list[list[str]] = []
        self.model = asyncio.Semaphore(1)
        self.loop: asyncio.Task | None = None

    async def submit(self, name: str) -> str:
        if self.loop is None:
            self.loop = asyncio.ensure_future(self._form_batches())
        fut = asyncio.get_running_loop().create_future()
        self.queue.put_nowait((name, fut))
        return await fut

    async def _form_batches(self):
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty():
                batch.append(self.queue.get_nowait())
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch):
        async with self.model:
            self.batches.append([n for n, _ in batch])
            await asyncio.sleep(self.call_s)
            for n, f in batch:
                f.set_result(n)

    def close(self):
        if self.loop is not None:
            self.loop.cancel()


def test_requests_arriving_during_a_model_call_form_the_next_batch_together():
    async def main():
        turns, batcher = FairTurns(max_tokens=2048, max_requests=32), _Batcher(0.05)

        async def request(name: str, delay: float) -> str:
            await asyncio.sleep(delay)
            async with turns.turn():
                return await batcher.submit(name)

        # a: alone on an idle model (no wait). b-e arrive while a runs: one batch after it, not four.
        # f arrives while b-e run: the batch after that.
        names = await asyncio.gather(
            request("a", 0), *(request(n, 0.01 * (i + 1)) for i, n in enumerate("bcde")), request("f", 0.07)
        )
        assert names == list("abcdef")
        assert batcher.batches == [["a"], ["b", "c", "d", "e"], ["f"]]
        assert turns.inside == 0
        batcher.close()

    asyncio.run(main())


def test_without_turns_the_same_arrivals_make_more_smaller_batches():
    """The control for the test above: without turns every late arrival closes its own batch (1 request each),
    which then queues behind the running call."""
    async def main():
        batcher = _Batcher(0.05)

        async def request(name: str, delay: float) -> str:
            await asyncio.sleep(delay)
            return await batcher.submit(name)

        await asyncio.gather(request("a", 0), *(request(n, 0.01 * (i + 1)) for i, n in enumerate("bcde")))
        assert batcher.batches == [["a"], ["b"], ["c"], ["d"], ["e"]]
        batcher.close()

    asyncio.run(main())


def test_a_failed_or_cancelled_request_does_not_keep_the_door_shut():
    async def main():
        turns = FairTurns(max_tokens=2048, max_requests=32)
        with pytest.raises(RuntimeError):
            async with turns.turn():
                raise RuntimeError("model failed")
        assert turns.inside == 0

        entered = asyncio.Event()

        async def slow():
            async with turns.turn():
                entered.set()
                await asyncio.sleep(10)

        task = asyncio.ensure_future(slow())
        await entered.wait()
        waiter = asyncio.ensure_future(_enter(turns))
        await asyncio.sleep(0.01)
        assert not waiter.done()  # waits while the slow request is inside
        task.cancel()
        assert await asyncio.wait_for(waiter, 1) == "in"
        assert turns.inside == 0

    asyncio.run(main())


async def _enter(turns: FairTurns) -> str:
    async with turns.turn():
        return "in"


def test_a_big_tenants_chunks_never_hold_a_small_request_behind_them():
    """Tenant A's big request arrives as chunks of 2048 tokens, queued before tenant B's one-input request; the
    call running when B arrived finishes, then B goes in the very next group (alone, since A's next chunk does not
    fit the group's token budget with it), not behind A's queued chunks."""
    async def main():
        turns, batcher = FairTurns(max_tokens=2048, max_requests=32), _Batcher(0.05)

        async def request(name: str, tenant: str, cost: int, delay: float) -> str:
            await asyncio.sleep(delay)
            async with turns.turn(tenant, cost):
                return await batcher.submit(name)

        await asyncio.gather(*(request(f"a{i}", "A", 2048, 0.001 * i) for i in range(4)), request("b", "B", 12, 0.01))
        assert batcher.batches == [["a0"], ["b"], ["a1"], ["a2"], ["a3"]]
        assert turns.inside == 0 and turns.waiting == 0
        batcher.close()

    asyncio.run(main())


def test_groups_keep_to_the_token_and_request_budgets_and_share_between_tenants():
    """While a call runs, A queues six 500-token requests and B and C two each; the groups that follow hold at most
    2048 tokens (and 3 requests here), and alternate between the tenants by tokens served (start-time fair
    queueing) instead of serving A's backlog first."""
    async def main():
        turns, batcher = FairTurns(max_tokens=2048, max_requests=3), _Batcher(0.02)

        async def request(name: str, tenant: str, delay: float) -> str:
            await asyncio.sleep(delay)
            async with turns.turn(tenant, 500):
                return await batcher.submit(name)

        first = asyncio.ensure_future(request("x", "X", 0))
        await asyncio.sleep(0.005)  # x is at the model: everyone below waits, in this arrival order
        names = [(f"a{i}", "A") for i in range(6)] + [(f"b{i}", "B") for i in range(2)] + [(f"c{i}", "C") for i in range(2)]
        await asyncio.gather(first, *(request(n, t, 0) for n, t in names))
        groups = batcher.batches[1:]
        assert all(len(g) <= 3 for g in groups) and sum(len(g) for g in groups) == 10
        assert groups[0] == ["a0", "b0", "c0"] and groups[1] == ["a1", "b1", "c1"]  # one each, round by round
        assert [n for g in groups[2:] for n in g] == ["a2", "a3", "a4", "a5"]
        batcher.close()

    asyncio.run(main())


def test_a_waiter_cancelled_before_its_turn_leaves_no_trace():
    async def main():
        turns = FairTurns(max_tokens=100, max_requests=8)
        entered = asyncio.Event()
        release = asyncio.Event()

        async def holder():
            async with turns.turn("A", 10):
                entered.set()
                await release.wait()

        task = asyncio.ensure_future(holder())
        await entered.wait()
        cancelled = asyncio.ensure_future(_enter(turns))
        kept = asyncio.ensure_future(_enter(turns))
        await asyncio.sleep(0.01)
        assert turns.waiting == 2
        cancelled.cancel()
        await asyncio.sleep(0)
        assert turns.waiting == 1
        release.set()
        await task
        assert await asyncio.wait_for(kept, 1) == "in"
        assert turns.inside == 0 and turns.waiting == 0

    asyncio.run(main())


def test_a_waiter_cancelled_just_before_its_group_is_let_in_takes_no_place():
    """The client of a waiting request goes away (its task is cancelled: its future is cancelled at once, its
    handler runs later) and, before that handler runs, the request inside leaves and lets the next group in: the
    cancelled waiter must not be let in (its place would never be given back and every later request would wait
    for ever: seen as a service answering nothing after a load test's clients disconnected)."""
    async def main():
        turns = FairTurns(max_tokens=100, max_requests=8)
        release = asyncio.Event()
        entered = asyncio.Event()
        doomed: list[asyncio.Future] = []

        async def holder():
            async with turns.turn("A", 10):
                entered.set()
                await release.wait()
                doomed[0].cancel()  # then it leaves in the same step, before the cancelled task's handler runs

        task = asyncio.ensure_future(holder())
        await entered.wait()
        doomed.append(asyncio.ensure_future(_enter(turns)))
        kept = asyncio.ensure_future(_enter(turns))
        await asyncio.sleep(0.01)
        release.set()
        await task
        assert await asyncio.wait_for(kept, 1) == "in"
        with pytest.raises(asyncio.CancelledError):
            await doomed[0]
        assert turns.inside == 0 and turns.waiting == 0
        assert await asyncio.wait_for(_enter(turns), 1) == "in"  # and the door still opens

    asyncio.run(main())
