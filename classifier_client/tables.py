"""The CLI's output: plain-text tables that line up in a terminal (wide CJK characters included), one per command.

Apart from the commands (``cli.py``) so the formatting is checked on its own, without a server or an argument parser.
"""
from __future__ import annotations

import base64
import unicodedata
from typing import Any, Iterable, Sequence

from classifiers.protocol.wire import ClassificationResponse

INPUT_WIDTH = 60


def display_width(s: str) -> int:
    """Terminal columns of ``s``: wide (CJK) characters take 2, combining marks 0."""
    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in s)


def clip(s: str, width: int) -> str:
    """One line of at most ``width`` columns: whitespace runs become one space, longer text ends with '…'."""
    s = " ".join(str(s).split())
    if display_width(s) <= width:
        return s
    out, used = [], 0
    for ch in s:
        w = display_width(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Iterable[int] = ()) -> str:
    """A plain-text table: a header line, then one line per row; columns padded to their widest cell (by display
    width), columns in ``right`` right-aligned, no trailing spaces."""
    rows = [[str(c) for c in r] for r in rows]
    headers = [str(h) for h in headers]
    right = set(right)
    widths = [max([display_width(h)] + [display_width(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, c in enumerate(cells):
            pad = " " * (widths[i] - display_width(c))
            parts.append(pad + c if i in right else c + pad)
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])


def input_label(item: Any) -> str:
    if isinstance(item, dict):
        return f"[image] {item['image']}" if "image" in item else str(item.get("text", item))
    return str(item)


def fmt_score(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, (int, float)) else "-"


def classify_table(inputs: Sequence[Any], response: ClassificationResponse) -> str:
    """INPUT, PREDICTION, SCORE per input (plus GROUP per label group, OOS_SCORE, OUT_OF_SCOPE with abstain, and
    LABELS, every label that applies, with multi-label)."""
    data = response.data
    grouped = any(isinstance(d.prediction, dict) for d in data)
    abstain = any(d.out_of_scope is not None for d in data)
    multi = any(d.predicted_labels is not None for d in data)
    headers = ["INPUT", *(["GROUP"] if grouped else []), "PREDICTION", "SCORE", *(["OOS_SCORE", "OUT_OF_SCOPE"] if abstain else []),
               *(["LABELS"] if multi else [])]
    rows = []
    for d in data:
        text = clip(input_label(inputs[d.index]) if d.index < len(inputs) else f"#{d.index}", INPUT_WIDTH)
        groups = list(d.prediction) if isinstance(d.prediction, dict) else [None]
        for g in groups:
            pick = (lambda v, g=g: v.get(g) if isinstance(v, dict) else v) if g is not None else (lambda v: v)
            row = [text, *([g] if grouped else []), pick(d.prediction), fmt_score(pick(d.score))]
            if abstain:
                oos = pick(d.out_of_scope)
                row += [fmt_score(pick(d.oos_score)), "-" if oos is None else ("yes" if oos else "no")]
            if multi:
                row.append(", ".join(pick(d.predicted_labels) or []) or "-")
            rows.append(row)
    score_col = headers.index("SCORE")
    return format_table(headers, rows, right=[score_col] + ([score_col + 1] if abstain else []))


def preview_embedding(e: Any, n: int = 4) -> str:
    if isinstance(e, dict):
        return "; ".join(f"{k}: {preview_embedding(v, n)}" for k, v in e.items())
    if isinstance(e, str):
        return clip(e, 40)
    head = ", ".join(f"{x:.4f}" if isinstance(x, float) else str(x) for x in e[:n])
    return f"[{head}{', …' if len(e) > n else ''}]"


def embedding_dim(e: Any) -> str:
    """Components of one embedding: a float list's length, a base64 string's float32 count; per type for a dict.
    (``binary``/``ubinary`` lists hold 8 sign bits per number: their length is the dimension / 8.)"""
    if isinstance(e, list):
        return str(len(e))
    if isinstance(e, dict):
        return "/".join(embedding_dim(v) for v in e.values())
    try:
        n = len(base64.b64decode(e, validate=True))
    except (ValueError, TypeError):
        return "-"
    return str(n // 4) if n % 4 == 0 else "-"
