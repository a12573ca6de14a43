"""What the README states the service answers, and the check that an answer agrees with it.

The embedded engines' scores move slightly from one CPU to another (SIMD path, reduction order, thread count),
so a stated score is checked within ``SCORE_TOLERANCE``; the predicted labels are checked exactly. Measured:
the same README request answered 0.69 / 0.70 and 0.78 / 0.77 (a 0.01 move after rounding) on an AVX-512 machine
and on the development machine; 1 and 2 engine threads on one machine gave identical scores.
"""
from __future__ import annotations

import json
import re

SCORE_TOLERANCE = 0.03  # three times the largest move measured across CPUs, so a real change still shows
_STATED = re.compile(r"\s*(?P<label>[^,()]+?) \((?P<score>\d\.\d+)\)\s*")


def stated_predictions(sentence: str) -> list[tuple[str, float]]:
    """'A (0.73), B (0.69)' -> [('A', 0.73), ('B', 0.69)]."""
    out = []
    for part in " ".join(sentence.split()).split("),"):
        m = _STATED.fullmatch(part if part.rstrip().endswith(")") else part + ")")
        if not m:
            raise ValueError(f"not a 'label (score)' list: {part!r} in {sentence!r}")
        out.append((m["label"], float(m["score"])))
    return out


def first_shown_result(readme: str, marker: str = '{"data":[') -> dict:
    """The first result object of the JSON answer the README shows (the rest of it is elided there)."""
    start = readme.index(marker) + len(marker)
    obj, _ = json.JSONDecoder().raw_decode(readme[start:])
    return obj


def mismatches(stated: list[tuple[str, float]], answered: list[tuple[str, float]],
               tolerance: float = SCORE_TOLERANCE) -> list[str]:
    """What differs between stated and answered (label, score) pairs: any label, or a score beyond tolerance."""
    if len(stated) != len(answered):
        return [f"{len(stated)} stated, {len(answered)} answered"]
    out = []
    for i, ((s_label, s_score), (a_label, a_score)) in enumerate(zip(stated, answered, strict=True)):
        if s_label != a_label:
            out.append(f"#{i}: stated {s_label!r}, answered {a_label!r}")
        elif abs(s_score - a_score) > tolerance:
            out.append(f"#{i} {s_label!r}: stated {s_score}, answered {a_score:.4f} (tolerance {tolerance})")
    return out
