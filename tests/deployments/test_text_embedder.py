"""Concurrent HTTP requests are coalesced by @serve.batch: observed through /v1/stats, not by timing."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

pytestmark = pytest.mark.e2e


def test_concurrent_requests_are_coalesced_into_batches(http, serve_url):
    model = "multilingual-e5-small"
    labels = ["weather", "sport", "cooking"]
    http.post("/v1/classify", json={"model": model, "input": ["warm up"], "labels": labels})  # labels now cached
    before = http.get("/v1/stats").json()["embedders"][model]

    def one(i: int) -> int:
        with httpx.Client(base_url=serve_url, timeout=120) as c:
            text = f"Sentence number {i}: the weather today is sunny with a chance of rain in the evening."
            return c.post("/v1/classify", json={"model": model, "input": [text], "labels": labels}).status_code

    with ThreadPoolExecutor(max_workers=32) as pool:
        codes = list(pool.map(one, range(64)))
    assert codes == [200] * 64
    after = http.get("/v1/stats").json()["embedders"][model]
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 64  # one per request: the label embeddings were cached
    assert batches < requests, after  # several requests shared a model call
    assert after["max_requests_in_batch"] > 1
