"""Classified inputs waiting to be learned from (``learn_from_inputs``): bounded buffers and when a chunk is due.

An owner's ``/v1/classify`` on a classifier with ``learn_from_inputs`` on hands its input vectors here *after* its
answer was computed (so an answer never depends on its own inputs). They wait in memory, never on disk, until a
chunk is due (``chunk_inputs`` of them, or ``max_wait_s`` after the first), and the table then folds the chunk into
the classifier through its ordinary serialised, fenced write (``ClassifierTable``). The buffers are bounded per
classifier and in total by bytes: past a bound new inputs are not kept (counted in ``dropped``), never queued
without limit, so no traffic can grow a shard's memory. Pure Python and numpy: no Ray, no event loop.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["InputLearningConfig", "PendingInputs"]


class InputLearningConfig(BaseModel):
    """How a state shard batches the inputs its classifiers learn from (``learn_from_inputs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    chunk_inputs: int = Field(
        default=64, ge=1, le=4096,
        description="Inputs a classifier gathers before one adaptation step (one statistics load and one fenced "
        "write of the classifier): the write costs the same for 1 input or 4096, so a chunk amortises it.",
    )
    max_wait_s: float = Field(
        default=5.0, gt=0,
        description="A classifier with fewer than `chunk_inputs` waiting learns them this long after the first "
        "arrived (a quiet classifier still learns, within seconds).",
    )
    max_pending_per_classifier: int = Field(
        default=1024, ge=1,
        description="Inputs one classifier may have waiting; more while a step runs are not kept (a classifier "
        "classified faster than it can learn learns a sample of its traffic).",
    )
    max_pending_bytes: int = Field(
        default=32 * 2**20, ge=1,
        description="Bytes of waiting input vectors in one shard over all its classifiers (float32 rows): the "
        "bound on the memory learning from inputs can take, whatever the traffic.",
    )


@dataclass
class _Waiting:
    rows: list[np.ndarray] = field(default_factory=list)
    count: int = 0
    since: float = 0.0  # monotonic time the first waiting row arrived


class PendingInputs:
    """Per-classifier buffers of input vectors waiting to be learned; ``add`` says when a chunk is due."""

    def __init__(self, config: InputLearningConfig, *, clock: Callable[[], float] = time.monotonic):
        self.config = config
        self._clock = clock
        self._waiting: dict[str, _Waiting] = {}
        self.nbytes = 0
        self.dropped = 0  # inputs not kept because a bound was reached

    def add(self, cid: str, X: np.ndarray) -> bool:
        """Keep as many of ``X``'s rows as the bounds allow; True when ``cid`` has a full chunk waiting."""
        w = self._waiting.setdefault(cid, _Waiting(since=self._clock()))
        row_bytes = max(1, X.shape[1] * 4)
        room = min(
            self.config.max_pending_per_classifier - w.count,
            (self.config.max_pending_bytes - self.nbytes) // row_bytes,
        )
        keep = max(0, min(len(X), room))
        self.dropped += len(X) - keep
        if keep:
            w.rows.append(np.ascontiguousarray(X[:keep], dtype=np.float32))
            w.count += keep
            self.nbytes += keep * row_bytes
        if not w.count:
            del self._waiting[cid]
            return False
        return w.count >= self.config.chunk_inputs

    def due_in(self, cid: str) -> float | None:
        """Seconds until ``cid``'s waiting inputs are due by age (0 if now; None if nothing waits)."""
        w = self._waiting.get(cid)
        if w is None:
            return None
        if w.count >= self.config.chunk_inputs:
            return 0.0
        return max(0.0, w.since + self.config.max_wait_s - self._clock())

    def take(self, cid: str) -> np.ndarray | None:
        """Everything ``cid`` has waiting, as one (n, dim) float32 array, and forget it; None if nothing."""
        w = self._waiting.pop(cid, None)
        if w is None:
            return None
        X = w.rows[0] if len(w.rows) == 1 else np.concatenate(w.rows)
        self.nbytes -= X.nbytes
        return X

    def drop(self, cid: str) -> int:
        """Forget ``cid``'s waiting inputs (learning turned off, the classifier deleted); how many there were."""
        X = self.take(cid)
        return 0 if X is None else len(X)

    def waiting(self, cid: str) -> int:
        w = self._waiting.get(cid)
        return 0 if w is None else w.count

    @property
    def total(self) -> int:
        return sum(w.count for w in self._waiting.values())
