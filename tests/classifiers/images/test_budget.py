"""Per-process sharing: the pixel budget queue, the fetch slots, and the replica budget across requests."""
from __future__ import annotations

import asyncio

from classifiers.images.budget import (
    PixelBudget,
    fetch_failure_counts,
    fetch_failure_kind,
    image_memory_stats,
    record_fetch_failure,
)
from classifiers.images.config import ImageFetchConfig
from classifiers.images.decode import max_image_pixels
from classifiers.images.stream import embed_images
from tests.classifiers.images.helpers import b64, encoded, load, run


def test_pixel_budget_is_first_come_first_served_and_clamps():
    async def go():
        budget = PixelBudget(10)
        assert await budget.acquire(50) == 10  # larger than the whole budget: clamped, so it can ever run
        order = []

        async def take(name, n):
            await budget.acquire(n)
            order.append(name)

        big, small = asyncio.ensure_future(take("big", 8)), asyncio.ensure_future(take("small", 1))
        await asyncio.sleep(0)
        assert budget.waiting == 2 and order == []
        budget.release(10)
        await asyncio.gather(big, small)
        cancelled = asyncio.ensure_future(budget.acquire(5))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        return order, budget.used, budget.waiting, budget.peak

    assert run(go) == (["big", "small"], 9, 0, 10)


def test_concurrency_is_bounded(server):
    cfg = ImageFetchConfig(allow_hosts=[f"127.0.0.1:{server.port}"], max_concurrency=2, timeout_s=10)
    server.max_in_flight = 0
    urls = [server.url(f"/delay-ok?s=0.15&i={i}") for i in range(6)]
    assert len(load(urls, cfg)) == 6
    assert server.max_in_flight == 2


def test_the_replica_budget_is_shared_and_never_deadlocks():
    """Eight concurrent requests of six images each, with a replica budget of about two images: every request
    completes, the replica never held more than its budget, and everything is released at the end."""
    cfg = ImageFetchConfig(max_replica_pixels=2 * max_image_pixels(64), max_request_pixels=10**9, max_concurrency=3)
    requests = [[b64(encoded((300, 200), color=(r, i, 0))) for i in range(6)] for r in range(8)]

    async def embed(images):
        await asyncio.sleep(0)  # the model call yields, as a real batch does
        return [im.getpixel((0, 0))[:2] for im in images]

    async def go():
        results = await asyncio.wait_for(  # a deadlock would hang here (guard only, not a timing assert)
            asyncio.gather(*(embed_images(v, list(range(6)), cfg, embed, short_side=64) for v in requests)), 120
        )
        return results, image_memory_stats()

    results, stats = run(go)
    assert results == [[(r, i) for i in range(6)] for r in range(8)]
    assert 0 < stats["held_pixels_peak"] <= cfg.max_replica_pixels and stats["held_pixels"] == 0


def test_fetch_failures_are_counted_by_the_kind_their_reason_names():
    assert fetch_failure_kind("DNS lookup of 'a.example' took longer than 5s") == "timeout"
    assert fetch_failure_kind("could not resolve host 'a.example'") == "dns"
    assert fetch_failure_kind("host '10.0.0.1' is a private address, which image URLs may not reach") == "address"
    assert fetch_failure_kind("TLS handshake failed to 'https://a.example/x.png'") == "tls"
    assert fetch_failure_kind("something nobody foresaw") == "other"
    before = fetch_failure_counts().get("dns", 0)
    record_fetch_failure("could not resolve host 'a.example'")
    assert fetch_failure_counts()["dns"] == before + 1
