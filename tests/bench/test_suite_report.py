"""The bench suite's report on synthetic results: issue 30's targets table (MET / NOT MET, cells with too few
finished requests not measured), the median of several runs, the generated doc section, and the load generator's
window and wrk output parsing. Nothing here runs a server or times anything."""
from __future__ import annotations

import copy

import pytest

from bench import loadgen, machine, report
from bench.loadgen import Window
from bench.targets import E5, MINILM, TABLE, Cells, target_rows


def cell(system, endpoint, model, size, conc, inputs_per_s, *, kind="short", requests=100, p50=10.0, cpu=None):
    row = {"system": system, "endpoint": endpoint, "model": model, "kind": kind, "size": size, "concurrency": conc,
           "rps": inputs_per_s / size, "inputs_per_s": inputs_per_s, "requests": requests, "duration_s": 6.0,
           "non2xx": 0, "timeouts": 0, "sock": 0, "p50": p50, "p99": 2 * p50, "mean": p50, "min_requests": 20}
    if cpu:
        row["cpu_ms"] = cpu
    return row


def results(scale: float = 1.0) -> dict:
    """One run where every target is met (``scale`` multiplies the service's rates)."""
    rows = []
    for model, naive in ((MINILM, 100.0), (E5, 50.0)):
        for n in (1, 16, 64):
            rows.append(cell("naive", "zeroshot", model, 1, n, naive, p50=10.0,
                             cpu={"other": 6.0, "total": 6.0}))
            rows.append(cell("service", "zeroshot", model, 1, n, naive * 2.5 * scale, p50=12.0,
                             cpu={"proxy": 0.2, "ingress": 0.6, "model": 4.0, "embedder": 0.3, "state": 0, "ray": 0.1,
                                  "other": 0.0, "total": 5.2} if n == 16 else None))
            rows.append(cell("service", "zeroshot", model, 32, n, 400.0 + n, requests=40))
            if model == E5:  # MiniLM's embeddings cells are beside infinity's, below
                rows.append(cell("service", "embeddings", model, 32, n, 400.0, requests=30))
        for mode in ("single", "multi"):
            for kind in ("zeroshot", "fewshot"):
                for n in (1, 16):
                    rows.append(cell("service", f"{kind}-{mode}-label", model, 1, n, 100.0 if mode == "single" else 95.0))
        for mode, rate in (("off", 100.0), ("on", 97.0)):
            for n in (1, 16):
                rows.append(cell("service", f"fewshot-learning-{mode}", model, 1, n, rate))
    for size in (1, 32):
        for n in (16, 64):
            rows.append(cell("infinity", "peer", MINILM, size, n, 200.0, cpu={"other": 5.0, "total": 5.0}))
            rows.append(cell("service", "embeddings", MINILM, size, n, 210.0 * scale))
    for labels, rate in ((2, 100.0), (256, 95.0)):
        for n in (1, 16):
            rows.append(cell("service", f"zeroshot-{labels}labels", MINILM, 1, n, rate))
    raw = {m: {"short": {"rates": {1: 100.0, 8: 300.0}, "best_batch": 8, "best": 300.0, "p50_single_ms": 6.0,
                         "tokens": 11.0}} for m in (MINILM, E5)}
    return {"started": "2026-01-01 00:00", "command": "./scripts/bench --quick", "took_min": 5.0, "rows": rows,
            "raw": raw, "notes": {}, "cold_start_s": 10.0, "args": {"seconds": 4, "min_requests": 20, "max_seconds": 60},
            "machine": {"cpu": "x", "cores": 2, "mem_gib": 8, "gpu": False, "os": "linux", "python": "3.11",
                        "torch": "2", "ray": "2", "uvicorn": "0", "wrk": ["wrk 4"]}}


def verdicts(res: dict) -> dict[str, str]:
    lines = target_rows(res)[2:]
    return {ln.split(" | ")[0].lstrip("| "): ln.rstrip(" |").rsplit(" | ", 1)[1] for ln in lines}


def find(rows: list[dict], system, endpoint, model, size, conc) -> dict:
    return next(r for r in rows if (r["system"], r["endpoint"], r["model"], r["size"], r["concurrency"])
                == (system, endpoint, model, size, conc))


def test_the_table_is_issue_30s_with_every_row_met_on_a_good_run():
    got = verdicts(results())
    assert len(got) == len(TABLE) == 16
    assert list(got)[:10] == [
        "MiniLM 1 input vs naive, 16 / 64 clients", "e5 (the default) 1 input vs naive, 16 / 64",
        "`/v1/embeddings` vs infinity-emb, 1 input, 16 / 64", "`/v1/embeddings` vs infinity-emb, 32 inputs, 16 / 64",
        "MiniLM 32 inputs, 64 clients vs 16 clients", "e5 32 inputs at 16 / 64 clients",
        "256 vs 2 labels, 16 clients (MiniLM)", "p50 at one client, MiniLM", "cold start to `/ready`",
        "CPU per request outside the model"]
    assert set(got.values()) == {"MET"}, got


def test_each_threshold_is_the_issues():
    res = results()
    rows = res["rows"]
    find(rows, "service", "zeroshot", MINILM, 1, 64)["inputs_per_s"] = 199.0  # 1.99 x naive
    find(rows, "service", "zeroshot", MINILM, 32, 64)["inputs_per_s"] = 410.0  # drop vs 416 at 16 clients
    find(rows, "service", "zeroshot", E5, 32, 16)["requests"] = 19
    find(rows, "service", "zeroshot-256labels", MINILM, 1, 16)["rps"] = 90.0  # 1.11 x the time
    find(rows, "service", "zeroshot", MINILM, 1, 1)["p50"] = 13.1  # naive + 3.1 ms
    find(rows, "service", "zeroshot", MINILM, 1, 16)["cpu_ms"]["model"] = 3.6  # 1.6 ms outside
    find(rows, "service", "fewshot-learning-on", E5, 1, 16)["rps"] = 90.0  # 1.11 x the time of learning off
    res["cold_start_s"] = 12.5
    got = verdicts(res)
    for measure in ("MiniLM 1 input vs naive, 16 / 64 clients", "MiniLM 32 inputs, 64 clients vs 16 clients",
                    "256 vs 2 labels, 16 clients (MiniLM)", "p50 at one client, MiniLM", "cold start to `/ready`",
                    "CPU per request outside the model",
                    "few-shot classify with `learn_from_inputs` on vs off, 1 / 16 clients (e5)"):
        assert got[measure] == "NOT MET", measure
    assert got["few-shot classify with `learn_from_inputs` on vs off, 1 / 16 clients (MiniLM)"] == "MET"
    assert got["e5 (the default) 1 input vs naive, 16 / 64"] == "MET"
    # 19 finished: under the issue's 20 (and the run's minimum)
    assert got["e5 32 inputs at 16 / 64 clients"] == "NOT MET"


def test_a_cell_with_too_few_finished_requests_is_not_measured():
    res = results()
    find(res["rows"], "service", "embeddings", MINILM, 32, 64)["requests"] = 3
    got = verdicts(res)
    assert got["`/v1/embeddings` vs infinity-emb, 32 inputs, 16 / 64"] == "NOT MET (not measured)"
    line = next(ln for ln in target_rows(res) if "32 inputs, 16 / 64" in ln)
    assert "3 finished < 20" in line and "64: not measured" in line


def test_missing_systems_make_rows_not_measured():
    res = results()
    res["rows"] = [r for r in res["rows"] if r["system"] != "infinity"]
    del res["cold_start_s"]
    got = verdicts(res)
    assert got["`/v1/embeddings` vs infinity-emb, 1 input, 16 / 64"] == "NOT MET (not measured)"
    assert got["cold start to `/ready`"] == "NOT MET (not measured)"


def test_the_median_of_three_runs_per_cell_and_per_target():
    runs = [results(0.7), results(1.0), results(1.3)]  # the service at 1.75, 2.5, 3.25 x naive
    runs[2]["rows"][0]["requests"] = 7
    merged = report.median_results(runs)
    assert len(merged["runs"]) == 3 and merged["cold_start_s"] == 10.0
    svc = find(merged["rows"], "service", "zeroshot", MINILM, 1, 16)
    assert svc["inputs_per_s"] == pytest.approx(250.0) and svc["runs"] == 3
    assert svc["cpu_ms"]["total"] == pytest.approx(5.2)
    assert find(merged["rows"], "naive", "zeroshot", MINILM, 1, 1)["requests"] == 100
    line = next(ln for ln in target_rows(merged) if ln.startswith("| MiniLM 1 input vs naive"))
    assert "2.50 ×" in line and "median of 1.75, 2.5, 3.25" in line and line.endswith("| MET |")


def test_the_median_needs_half_of_the_runs_to_measure_a_value():
    runs = [results(), results(), results()]
    for res in runs[:2]:
        find(res["rows"], "infinity", "peer", MINILM, 1, 16)["requests"] = 2
    got = verdicts(report.median_results(runs))
    assert got["`/v1/embeddings` vs infinity-emb, 1 input, 16 / 64"] == "NOT MET (not measured)"
    find(runs[0]["rows"], "infinity", "peer", MINILM, 1, 16)["requests"] = 50
    assert verdicts(report.median_results(runs))["`/v1/embeddings` vs infinity-emb, 1 input, 16 / 64"] == "MET"


def test_the_doc_section_is_replaced_in_place(tmp_path):
    res = results()
    res["rows"].append({"system": "service", "endpoint": "zeroshot", "model": E5, "kind": "long", "size": 32,
                        "concurrency": 64, "skipped": "64 x 9.0 s backlog"})
    section = report.render(res, res["command"], tmp_path / "benchmarks.md", tmp_path / "bench")
    assert section.startswith(report.BEGIN) and section.rstrip().endswith(report.END)
    assert "### Targets (issue 30)" in section and "skipped: 64 x 9.0 s backlog" in section
    cpu = section.split("### CPU per request")[1]
    assert all(f"| {system} |" in cpu for system in ("naive", "infinity", "service"))
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\nhand-written\n\n{report.BEGIN}\nOLD SECTION\n{report.END}\n\n## after\n")
    report.write_doc(section, doc)
    text = doc.read_text()
    assert "OLD SECTION" not in text and "hand-written" in text and text.endswith("## after\n") and text.count(report.BEGIN) == 1


def test_cells_lookup_takes_the_runs_minimum():
    res = copy.deepcopy(results())
    res["args"]["min_requests"] = 500
    row, why = Cells(res).find("service", "zeroshot", MINILM, 1, 16)
    assert row is not None and "100 finished < 500" in why


def test_a_window_runs_to_its_minimum_within_its_bound():
    w = Window(4, 20, 60)
    assert w.bound_s == 60 and Window(4.2).bound_s == 5 and Window(4, 0, 60).bound_s == 4
    assert w.enough({"requests": 20}) and not w.enough({"requests": 19})
    lua = loadgen.lua_script("/v1/classify", [{"input": ["a]]b"]}], 16, w)
    assert "window, need, conns = 4, 20, 16" in lua and "kill(ffi.C.getpid(), 2)" in lua
    assert '[=[{"input": ["a]]b"]}]=]' in lua


def test_wrk_output_parses_into_a_cell():
    out = "Running 60s test\nRESULT 42 7.000000 1 0 0 2 0 12.5 80.0 20.0\n"
    r = loadgen.parse_result(out, Window(4, 20, 60))
    assert r["requests"] == 42 and r["rps"] == pytest.approx(6.0) and r["duration_s"] == 7.0
    assert (r["non2xx"], r["sock"], r["p50"], r["min_requests"]) == (1, 2, 12.5, 20)
    empty = loadgen.parse_result("RESULT 0 60.000000 0 0 0 0 0 0 0 0\n", Window(4, 20, 60))
    assert empty["requests"] == 0 and empty["p50"] is None
    assert loadgen.parse_result("wrk: connection refused", Window(4))["error"]


def test_the_infinity_venv_is_reinstalled_when_its_pins_change(tmp_path, monkeypatch):
    first = machine.infinity_stamp(tmp_path)
    monkeypatch.setattr(machine, "INFINITY_PINS", [*machine.INFINITY_PINS, "extra==1"])
    assert machine.infinity_stamp(tmp_path) != first
    monkeypatch.setenv("TORCH_SPEC", "torch==9")
    assert machine.torch_spec() == "torch==9"
    assert not any("torchvision" in p or "[all" in p or "vision" in p for p in machine.INFINITY_PINS)
