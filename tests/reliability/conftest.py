"""The reliability suite (`pytest -m reliability`, also part of the default run): faults under load, concurrency,
backpressure, fuzzing, security, memory. Every loop is bounded; all traffic goes to 127.0.0.1.

Tests record what they did in ``SUMMARY`` (the ``reliability`` fixture); the session ends with one printed
summary: faults injected, requests sent, acknowledged writes verified, 5xx seen, fuzz cases tried, peak RSS per
replica against its bound.
"""
from __future__ import annotations

from collections import Counter

import pytest

SUMMARY: dict = {"counts": Counter(), "rss": {}, "measures": {}}


class Recorder:
    """What a reliability test did, for the session summary."""

    def add(self, what: str, n: int = 1) -> None:
        SUMMARY["counts"][what] += n

    def measure(self, what: str, value: str) -> None:
        """A measured figure the issue asks to state (e.g. the worst wait behind another tenant's request)."""
        SUMMARY["measures"][what] = value

    def rss(self, replica: str, peak_bytes: int, bound_bytes: int) -> None:
        old = SUMMARY["rss"].get(replica)
        if old is None or peak_bytes > old[0]:
            SUMMARY["rss"][replica] = (peak_bytes, bound_bytes)


@pytest.fixture
def reliability() -> Recorder:
    return Recorder()


def pytest_collection_modifyitems(items):
    for item in items:
        if "/reliability/" in str(item.fspath):
            item.add_marker(pytest.mark.reliability)


def pytest_terminal_summary(terminalreporter):
    counts, rss, measures = SUMMARY["counts"], SUMMARY["rss"], SUMMARY["measures"]
    if not counts and not rss and not measures:
        return
    tr = terminalreporter
    tr.section("reliability summary")
    for key in ("faults injected", "requests sent", "acknowledged writes verified", "5xx seen", "fuzz cases tried"):
        tr.write_line(f"{key:<32} {counts.get(key, 0)}")
    for key in sorted(k for k in counts if k not in {"faults injected", "requests sent", "acknowledged writes verified",
                                                    "5xx seen", "fuzz cases tried"}):
        tr.write_line(f"{key:<32} {counts[key]}")
    for what, value in sorted(measures.items()):
        tr.write_line(f"{what:<32} {value}")
    for replica, (peak, bound) in sorted(rss.items()):
        tr.write_line(f"peak RSS {replica:<23} {peak / 2**20:8.0f} MiB  (bound {bound / 2**20:.0f} MiB)")
