"""AsyncClient over real HTTP (the scripted server of conftest.py): the same bodies, results, retries and errors as
Client, awaited."""
from __future__ import annotations

import asyncio

import pytest

from classifier_client import ApiError, AsyncClient

RESULT = {"data": [{"index": 0, "prediction": "sport", "score": 0.8,
                    "predictions": [{"label": "weather", "score": 0.2}, {"label": "sport", "score": 0.8}]}],
          "usage": {"total_tokens": 3}}


def test_async_classify_after_a_retried_503_and_an_error(server):
    server.answer((503, {"code": "SERVICE_UNAVAILABLE", "detail": "busy", "request_id": "r"}, {"Retry-After": "0"}),
                  (200, RESULT))

    async def go():
        async with AsyncClient(server.url, api_key="", backoff=0.0) as c:
            r = await c.classify("Who won?", labels=["weather", "sport"], model="m", abstain=0.05)
            server.answer((404, {"code": "RESOURCE_NOT_FOUND", "detail": "no such classifier", "request_id": "r9"}))
            with pytest.raises(ApiError) as err:
                await c.classify("x", classifier_id="c0")
            return r, err.value

    r, err = asyncio.run(go())
    assert r.data[0].prediction == "sport" and r.usage.total_tokens == 3
    assert (err.status, err.code, err.request_id) == (404, "RESOURCE_NOT_FOUND", "r9")
    assert server.seen[0].body == {"classifier_id": "c0", "input": ["x"]}
