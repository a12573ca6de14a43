"""The ingress's coalescing of small embed requests into handle calls (serve_app/embedders.py), in-process: the
handle calls are stand-ins that record what each carried (the thing under test is the Coalescer)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.embedding.requests import EmbedRequest, EmbedResult
from serve_app.embedders import COALESCE_MAX_REQUESTS, Coalescer


class Calls:
    """What each handle call carried; every call takes ``call_s``."""

    def __init__(self, call_s: float = 0.02, fail: bool = False):
        self.call_s, self.fail = call_s, fail
        self.carried: list[list[str]] = []
        self.in_flight = self.max_in_flight = 0

    async def one(self, model: str, request: EmbedRequest) -> EmbedResult:
        return (await self.many(model, [request]))[0]

    async def many(self, model: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        self.carried.append([r.texts[0] for r in requests])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.call_s)
            if self.fail:
                raise RuntimeError("replica died")
            return [EmbedResult(vectors=None, tokens=[len(r.texts[0])]) for r in requests]
        finally:
            self.in_flight -= 1


def request(i: int) -> EmbedRequest:
    return EmbedRequest([f"text {i}" + "x" * i], cost=3)


def test_requests_beyond_the_calls_in_flight_share_the_next_call_and_each_gets_its_own_answer():
    async def main():
        calls = Calls()
        co = Coalescer(calls.one, calls.many, max_in_flight=2)
        results = await asyncio.gather(*(co.embed("m", request(i)) for i in range(10)))
        assert [r.tokens for r in results] == [[len(request(i).texts[0])] for i in range(10)]
        assert calls.carried[:2] == [["text 0"], ["text 1" + "x"]]  # the first two go alone, at once
        assert sum(len(c) for c in calls.carried) == 10 and len(calls.carried) < 10  # the rest together
        assert calls.max_in_flight <= 2 and co.calls == len(calls.carried) and co.requests == 10

    asyncio.run(main())


def test_a_call_carries_at_most_its_share_and_a_failed_call_fails_only_its_requests():
    async def main():
        calls = Calls()
        co = Coalescer(calls.one, calls.many, max_in_flight=1)
        n = COALESCE_MAX_REQUESTS + 10
        await asyncio.gather(*(co.embed("m", request(i)) for i in range(n)))
        assert max(len(c) for c in calls.carried) == COALESCE_MAX_REQUESTS
        failing = Calls(fail=True)
        co = Coalescer(failing.one, failing.many, max_in_flight=1)
        results = await asyncio.gather(*(co.embed("m", request(i)) for i in range(5)), return_exceptions=True)
        assert all(isinstance(r, RuntimeError) for r in results)
        ok = Calls()
        co.call_one, co.call_many = ok.one, ok.many  # the lane is free again after failures
        assert (await co.embed("m", request(1))).tokens == [len(request(1).texts[0])]

    asyncio.run(main())


def test_a_caller_that_goes_away_while_waiting_is_not_sent():
    async def main():
        calls = Calls(call_s=0.05)
        co = Coalescer(calls.one, calls.many, max_in_flight=1)
        first = asyncio.ensure_future(co.embed("m", request(0)))
        await asyncio.sleep(0.01)
        gone = asyncio.ensure_future(co.embed("m", request(1)))
        kept = asyncio.ensure_future(co.embed("m", request(2)))
        await asyncio.sleep(0.01)
        gone.cancel()
        await first
        assert (await kept).tokens == [len(request(2).texts[0])]
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert calls.carried == [["text 0"], ["text 2xx"]]

    asyncio.run(main())
