import asyncio

import numpy as np
import pytest

from classifiers.embedding.batch import BatchStats, EmbedRequest, ModelTurns, embed_batch


def test_an_over_long_text_fails_only_its_own_request(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    reqs = [
        EmbedRequest(["fine", "also fine"], "input", 50),
        EmbedRequest(["ok", "word " * 100], "input", 50),
        EmbedRequest(["label one"], "label", 50),
    ]
    out = embed_batch(enc, reqs)
    assert out[0].vectors.shape == (2, enc.dim) and out[0].too_long is None
    assert out[1].vectors is None and out[1].too_long == 1 and out[1].tokens[1] > 50
    assert out[2].vectors.shape == (1, enc.dim)
    alone = embed_batch(enc, [EmbedRequest(["fine", "also fine"], "input", 50)])[0]
    assert np.allclose(alone.vectors, out[0].vectors, atol=2e-3)


def test_batch_stats_histogram():
    s = BatchStats()
    s.record([1, 2])
    s.record([1])
    snap = s.snapshot()
    assert snap["batches"] == 2 and snap["requests"] == 3 and snap["texts"] == 4
    assert snap["max_requests_in_batch"] == 2 and snap["requests_per_batch_histogram"] == {"1": 1, "2": 1}


def test_a_request_over_its_token_budget_is_refused_after_tokenising_before_the_model(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    calls = []
    original = enc.encode
    enc.encode = lambda texts, role: calls.append(list(texts)) or original(texts, role)
    try:
        texts = ["one two three four five six", "seven eight"]
        exact = sum(enc.count_tokens(texts, "input"))
        over, fits = embed_batch(enc, [EmbedRequest(texts, max_total_tokens=exact - 1), EmbedRequest(texts, max_total_tokens=exact)])
    finally:
        enc.encode = original
    assert over.over_budget and over.vectors is None and sum(over.tokens) == exact
    assert not fits.over_budget and fits.vectors.shape[0] == 2
    assert calls == [texts]  # the model saw only the request that fits


class _Batcher:
    """How ``@serve.batch`` with no timer behaves (ray/serve/batching.py): a loop task closes a batch as soon as its
    first request is queued, taking whatever else is queued at that moment, and only then waits for the model
    (one call at a time). The stand-in is for Serve's batcher; the thing under test is ModelTurns."""

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
        turns, batcher = ModelTurns(), _Batcher(0.05)

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
        turns = ModelTurns()
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


async def _enter(turns: ModelTurns) -> str:
    async with turns.turn():
        return "in"
