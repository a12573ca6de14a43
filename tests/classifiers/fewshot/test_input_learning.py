"""The buffers classified inputs wait in before a classifier learns from them: bounded, chunked, by age."""
from __future__ import annotations

import numpy as np

from classifiers.fewshot.input_learning import InputLearningConfig, PendingInputs


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def rows(n: int, dim: int = 4, start: int = 0) -> np.ndarray:
    return np.arange(start, start + n * dim, dtype=np.float32).reshape(n, dim)


def test_a_chunk_is_due_when_full_or_when_old():
    clock = Clock()
    pending = PendingInputs(InputLearningConfig(chunk_inputs=5, max_wait_s=2.0), clock=clock)
    assert pending.due_in("a") is None
    assert pending.add("a", rows(3)) is False
    assert pending.due_in("a") == 2.0
    clock.t += 1.5
    assert pending.due_in("a") == 0.5
    assert pending.add("a", rows(2, start=12)) is True and pending.due_in("a") == 0.0
    X = pending.take("a")
    assert X is not None and X.shape == (5, 4) and X.dtype == np.float32
    np.testing.assert_array_equal(X, np.vstack([rows(3), rows(2, start=12)]))  # arrival order, nothing lost
    assert pending.take("a") is None and pending.nbytes == 0 and pending.due_in("a") is None
    pending.add("b", rows(1))
    clock.t += 2.0
    assert pending.due_in("b") == 0.0  # a quiet classifier learns too, max_wait_s after its first input


def test_bounds_per_classifier_and_in_bytes_keep_memory_bounded():
    pending = PendingInputs(InputLearningConfig(chunk_inputs=100, max_pending_per_classifier=10,
                                                max_pending_bytes=16 * 4 * 4))  # 16 rows of 4 floats
    pending.add("a", rows(25))
    assert pending.waiting("a") == 10 and pending.dropped == 15
    pending.add("b", rows(10))
    assert pending.waiting("b") == 6 and pending.dropped == 19  # the shard's byte bound: 16 rows in all
    assert pending.nbytes == 16 * 16 and pending.total == 16
    assert pending.add("c", rows(3)) is False and pending.waiting("c") == 0 and pending.due_in("c") is None
    for _ in range(1000):  # any traffic: the bound holds
        pending.add("a", rows(50))
    assert pending.nbytes == 16 * 16
    assert pending.drop("a") == 10 and pending.nbytes == 6 * 16
    pending.add("c", rows(3))
    assert pending.waiting("c") == 3  # room freed by the drop is usable again


def test_a_full_chunk_is_reported_once_it_is_reached():
    pending = PendingInputs(InputLearningConfig(chunk_inputs=4))
    assert [pending.add("a", rows(1)) for _ in range(5)] == [False, False, False, True, True]
