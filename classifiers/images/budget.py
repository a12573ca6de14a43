"""What one replica process's image work shares, so that its image memory is bounded by config, not by requests."""
from __future__ import annotations

import asyncio
import collections
import contextlib
import weakref
from collections import Counter
from dataclasses import dataclass

from classifiers.images.config import ImageFetchConfig


class PixelBudget:
    """A first-come, first-served budget of pixels for one event loop: decoded images hold their share until
    released. A request larger than the whole budget is clamped to it (one image alone always fits).
    ``listeners`` are events set whenever someone starts waiting, so holders know to hand their images on."""

    def __init__(self, total: int):
        self.total = total
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future]] = collections.deque()
        self.listeners: set[asyncio.Event] = set()

    @property
    def waiting(self) -> int:
        return len(self._waiters)  # granted and cancelled waiters leave the queue at once

    async def acquire(self, n: int) -> int:
        """Take ``n`` pixels (clamped to the total) once they are free; returns what was taken."""
        n = max(0, min(int(n), self.total))
        if not self._waiters and self.used + n <= self.total:
            self._take(n)
            return n
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._waiters.append(entry)
        for event in self.listeners:
            event.set()
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():  # granted just as the caller was cancelled: give it back
                self.release(n)
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(entry)
                self._wake()  # a large waiter leaving the head may let the next ones in
            raise
        return n

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)

    def _wake(self) -> None:
        while self._waiters:
            n, fut = self._waiters[0]
            if fut.done():
                self._waiters.popleft()
                continue
            if self.used + n > self.total:
                break
            self._waiters.popleft()
            self._take(n)
            fut.set_result(None)


@dataclass
class ProcessShare:
    """What all requests of one replica process (one event loop) share."""

    fetches: asyncio.Semaphore  # images between fetch and the end of decoding (their file bytes are held)
    decoding: PixelBudget  # full-resolution pixels being decoded
    held: PixelBudget  # downscaled pixels held by requests until the model has embedded them


_SHARED: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple, ProcessShare]]" = weakref.WeakKeyDictionary()


def process_share(config: ImageFetchConfig) -> ProcessShare:
    """This event loop's shared fetch slots and pixel budgets for ``config``'s limits (made on first use)."""
    per_loop = _SHARED.setdefault(asyncio.get_running_loop(), {})
    key = (config.max_concurrency, config.max_decoding_pixels, config.max_replica_pixels)
    found = per_loop.get(key)
    if found is None:
        found = per_loop[key] = ProcessShare(
            asyncio.Semaphore(config.max_concurrency), PixelBudget(config.max_decoding_pixels),
            PixelBudget(config.max_replica_pixels),
        )
    return found


def image_memory_stats() -> dict:
    """This process's (this event loop's) image memory: decoded pixels held now and at peak, and full-resolution
    pixels being decoded now and at peak, each with its limit. For /v1/stats and the memory tests."""
    out = {"held_pixels": 0, "held_pixels_peak": 0, "held_pixels_limit": 0,
           "decoding_pixels": 0, "decoding_pixels_peak": 0, "decoding_pixels_limit": 0}
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return out
    for shared in _SHARED.get(loop, {}).values():
        out["held_pixels"] += shared.held.used
        out["held_pixels_peak"] += shared.held.peak
        out["held_pixels_limit"] += shared.held.total
        out["decoding_pixels"] += shared.decoding.used
        out["decoding_pixels_peak"] += shared.decoding.peak
        out["decoding_pixels_limit"] += shared.decoding.total
    return out


FETCH_FAILURE_KINDS = (  # (kind, words in the reason): the first match names a failure's kind
    ("timeout", ("took longer", "timed out", "timeout")), ("dns", ("resolve", "dns")),
    ("address", ("may not reach",)), ("tls", ("tls", "ssl", "certificate")), ("redirect", ("redirect",)),
    ("too_large", ("larger than", "limit of")), ("http_status", ("status", "http ")), ("connect", ("connect",)),
)
FETCH_FAILURES: Counter = Counter()  # kind -> failed fetches in this process (exported as a metric by the replica)


def fetch_failure_counts() -> dict[str, int]:
    """Failed fetches by kind in this process. A function, not the Counter itself, for callers elsewhere: a Serve
    deployment class may be pickled by value, and a global it captured would be a copy, not this process's."""
    return dict(FETCH_FAILURES)


def record_fetch_failure(reason: str) -> None:
    """Count one failed fetch under the kind its (logged, never told) reason names."""
    FETCH_FAILURES[fetch_failure_kind(reason)] += 1


def fetch_failure_kind(reason: str) -> str:
    low = reason.lower()
    return next((kind for kind, words in FETCH_FAILURE_KINDS if any(w in low for w in words)), "other")
