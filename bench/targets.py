"""The targets table of the bench suite: issue 30's table (plus issue 28's multi_label rows and issue 29's learn_from_inputs rows), each row computed from
a run's cells, MET or NOT MET.

A row holds one or more values (e.g. the ratio at 16 and at 64 clients); it is MET when every value is measured and
meets the goal. A value is not measured when its cell is missing, was skipped, or finished fewer requests than the
run's minimum (``min_requests``). Over several runs (``res["runs"]``, bench/report.py's median) each value is the
median of the runs that measured it, and not measured unless at least half of them did: ratios are taken within
each run first (the machine drifts between runs), then the median.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, replace

MINILM, E5 = "all-MiniLM-L6-v2", "multilingual-e5-small"
MIN_FINISHED = 20  # issue 30: every cell of e5 at 32 inputs finishes at least this many requests


@dataclass(frozen=True)
class Value:
    """One measured number of a row (``number`` None: not measured) and what it was computed from."""

    label: str
    number: float | None
    detail: str


@dataclass(frozen=True)
class Target:
    measure: str
    goal: str
    values: Callable[[Cells], list[Value]]
    ok: Callable[[float], bool]
    shown: Callable[[float], str]


class Cells:
    """The cells of one run, looked up by what they measured."""

    def __init__(self, res: dict):
        self.res = res
        self.min_requests = int(res.get("args", {}).get("min_requests", 0) or 0)
        self.rows = {(r["system"], r["endpoint"], r["model"], r["kind"], r["size"], r["concurrency"]): r
                     for r in res.get("rows", [])}

    def find(self, system: str, endpoint: str, model: str, size: int, conc: int, kind: str = "short"
             ) -> tuple[dict | None, str]:
        """(the cell, "") when it is measured, else (None or the cell, why it is not)."""
        name = f"{system} {endpoint} {model} {size} {kind} input(s), {conc} client(s)"
        r = self.rows.get((system, endpoint, model, kind, size, conc))
        if r is None:
            return None, f"{name}: not run"
        if r.get("skipped"):
            return None, f"{name}: skipped ({r['skipped']})"
        if r.get("requests", 0) < max(1, self.min_requests):
            return r, f"{name}: {r.get('requests', 0):g} finished < {max(1, self.min_requests)}"
        return r, ""


def missing(label: str, why: str) -> Value:
    return Value(label, None, f"not measured: {why}")


def ratio(cells: Cells, label: str, a: tuple, b: tuple, field: str = "inputs_per_s", unit: str = "inputs/s") -> Value:
    """a / b of one field of two cells (each ``(system, endpoint, model, size, conc)``)."""
    ra, why_a = cells.find(*a)
    rb, why_b = cells.find(*b)
    if why_a or why_b:
        return missing(label, why_a or why_b)
    if not rb[field]:
        return missing(label, f"{b[0]} {field} is 0")
    return Value(label, ra[field] / rb[field], f"{ra[field]:.1f} vs {rb[field]:.1f} {unit}")


def vs_naive(model: str) -> Callable[[Cells], list[Value]]:
    return lambda c: [ratio(c, f"{n}", ("service", "zeroshot", model, 1, n), ("naive", "zeroshot", model, 1, n))
                      for n in (16, 64)]


def vs_infinity(size: int) -> Callable[[Cells], list[Value]]:
    return lambda c: [ratio(c, f"{n}", ("service", "embeddings", MINILM, size, n),
                            ("infinity", "peer", MINILM, size, n)) for n in (16, 64)]


def more_clients(c: Cells) -> list[Value]:
    return [ratio(c, "64 / 16", ("service", "zeroshot", MINILM, 32, 64), ("service", "zeroshot", MINILM, 32, 16))]


def e5_finished(c: Cells) -> list[Value]:
    out = []
    for endpoint in ("zeroshot", "embeddings"):
        for n in (16, 64):
            r = c.rows.get(("service", endpoint, E5, "short", 32, n))
            label = f"{endpoint} {n}"
            if r is None or r.get("skipped"):
                if endpoint == "zeroshot" or r is not None:  # embeddings cells only count where they were run
                    out.append(missing(label, f"service {endpoint} e5 32 inputs, {n} clients: "
                                       + ("skipped" if r else "not run")))
                continue
            out.append(Value(label, float(r["requests"]), f"{r['requests']:g} in {r.get('duration_s', 0):.1f} s"))
    return out


def label_time(c: Cells) -> list[Value]:
    """Time per request with 256 labels over 2 (requests/s with 2 over with 256), 16 clients."""
    v = ratio(c, "16", ("service", "zeroshot-2labels", MINILM, 1, 16), ("service", "zeroshot-256labels", MINILM, 1, 16),
              field="rps", unit="requests/s (2 vs 256 labels)")
    return [v]


def p50_over_naive(c: Cells) -> list[Value]:
    svc, why_s = c.find("service", "zeroshot", MINILM, 1, 1)
    nv, why_n = c.find("naive", "zeroshot", MINILM, 1, 1)
    if why_s or why_n:
        return [missing("1", why_s or why_n)]
    return [Value("1", svc["p50"] - nv["p50"], f"{svc['p50']:.1f} ms (naive {nv['p50']:.1f})")]


def cold_start(c: Cells) -> list[Value]:
    s = c.res.get("cold_start_s")
    return [Value("", s, "`python -m serve_app`, both models") if s is not None else missing("", "cold start not run")]


def outside_model(c: Cells) -> list[Value]:
    """CPU per one-input zero-shot request outside the model's calls (MiniLM, 5 labels, 16 clients)."""
    r, why = c.find("service", "zeroshot", MINILM, 1, 16)
    cpu = (r or {}).get("cpu_ms") or {}
    if why or "model" not in cpu:
        return [missing("", why or "no CPU split into model calls for this cell")]
    outside = cpu["total"] - cpu["model"]
    return [Value("", outside, f"{outside:.2f} of {cpu['total']:.2f} ms (model {cpu['model']:.2f})")]


def multi_label(kind: str, model: str) -> Callable[[Cells], list[Value]]:
    return lambda c: [ratio(c, f"{n}", ("service", f"{kind}-single-label", model, 1, n),
                            ("service", f"{kind}-multi-label", model, 1, n), field="rps",
                            unit="requests/s (single vs multi)") for n in (1, 16)]


def learning(model: str) -> Callable[[Cells], list[Value]]:
    return lambda c: [ratio(c, f"{n}", ("service", "fewshot-learning-off", model, 1, n),
                            ("service", "fewshot-learning-on", model, 1, n), field="rps",
                            unit="requests/s (learning off vs on)") for n in (1, 16)]


def at_least(x: float) -> Callable[[float], bool]:
    return lambda v: v >= x


def at_most(x: float) -> Callable[[float], bool]:
    return lambda v: v <= x


def times(v: float) -> str:
    return f"{v:.2f} ×"


TABLE: list[Target] = [
    Target("MiniLM 1 input vs naive, 16 / 64 clients", "≥ 2 ×", vs_naive(MINILM), at_least(2.0), times),
    Target("e5 (the default) 1 input vs naive, 16 / 64", "≥ 1 ×", vs_naive(E5), at_least(1.0), times),
    Target("`/v1/embeddings` vs infinity-emb, 1 input, 16 / 64", "≥ 1 ×", vs_infinity(1), at_least(1.0), times),
    Target("`/v1/embeddings` vs infinity-emb, 32 inputs, 16 / 64", "≥ 1 ×", vs_infinity(32), at_least(1.0), times),
    Target("MiniLM 32 inputs, 64 clients vs 16 clients", "no drop with more clients", more_clients, at_least(1.0),
           times),
    Target("e5 32 inputs at 16 / 64 clients", f"every cell ≥ {MIN_FINISHED} finished requests", e5_finished,
           at_least(MIN_FINISHED), lambda v: f"{v:g} finished"),
    Target("256 vs 2 labels, 16 clients (MiniLM)", "≤ 1.1 × the time", label_time, at_most(1.1), times),
    Target("p50 at one client, MiniLM", "≤ naive + 3 ms", p50_over_naive, at_most(3.0), lambda v: f"naive {v:+.1f} ms"),
    Target("cold start to `/ready`", "≤ 12 s", cold_start, at_most(12.0), lambda v: f"{v:.1f} s"),
    Target("CPU per request outside the model", "≤ 1.5 ms", outside_model, at_most(1.5), lambda v: f"{v:.2f} ms"),
    *[Target(f"{'zero-shot' if kind == 'zeroshot' else 'few-shot'} `multi_label` vs single-label, 1 / 16 clients "
             f"({'MiniLM' if model == MINILM else 'e5'})", "≤ 1.1 × the time", multi_label(kind, model), at_most(1.1),
             times)
      for model in (MINILM, E5) for kind in ("zeroshot", "fewshot")],
    *[Target(f"few-shot classify with `learn_from_inputs` on vs off, 1 / 16 clients "
             f"({'MiniLM' if model == MINILM else 'e5'})", "≤ 1.1 × the time", learning(model), at_most(1.1), times)
      for model in (MINILM, E5)],
]


def compact(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def median_values(per_run: list[list[Value]]) -> list[Value]:
    """Position by position, the median of the runs that measured a value (at least half of them must have)."""
    out = []
    for values in zip(*per_run, strict=True):
        got = [v.number for v in values if v.number is not None]
        if len(got) * 2 < len(values):
            out.append(replace(values[0], number=None, detail=next(v.detail for v in values if v.number is None)))
            continue
        shown = ", ".join(compact(v.number) if v.number is not None else "–" for v in values)
        out.append(Value(values[0].label, statistics.median(got), f"median of {shown}"))
    return out


def evaluate(target: Target, runs: list[dict]) -> tuple[str, str]:
    """(what was measured, MET / NOT MET) of one row over one or more runs."""
    per_run = [target.values(Cells(res)) for res in runs]
    values = per_run[0] if len(per_run) == 1 else median_values(per_run)
    if not values:
        return "not measured", "NOT MET (not measured)"
    parts = []
    for v in values:
        head = f"{v.label}: " if v.label and len(values) > 1 else ""
        parts.append(f"{head}{target.shown(v.number)} ({v.detail})" if v.number is not None else f"{head}{v.detail}")
    if any(v.number is None for v in values):
        verdict = "NOT MET (not measured)"
    else:
        verdict = "MET" if all(target.ok(v.number) for v in values) else "NOT MET"
    return "; ".join(parts), verdict


def target_rows(res: dict) -> list[str]:
    """The targets table (markdown), from one run's results or the median of several (``res["runs"]``)."""
    runs = res.get("runs") or [res]
    out = ["| measure | measured | target | result |", "|---|---|---|---|"]
    for target in TABLE:
        measured, verdict = evaluate(target, runs)
        out.append(f"| {target.measure} | {measured} | {target.goal} | {verdict} |")
    return out
