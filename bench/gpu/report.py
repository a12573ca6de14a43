"""The GPU engine check's report: CPU cores per GPU, and the results as JSON and a markdown table.

Cores per GPU: a one-input request (a classify's labels come from the label-vector cache) is one short text to the
model, so a GPU serving one model answers at most its best short-input texts/s in requests/s. Every request also
costs CPU outside the model (proxy, ingress, handle hops, tokenising: measured on the CPU machine, docs/benchmarks.md,
``bench/cpu.py``), given here as ``cpu_ms_per_request``; cores = requests/s x CPU seconds per request.
"""
from __future__ import annotations

import json
import os

DEFAULT_CPU_MS = (2.7, 1.5)
"""CPU ms per one-input request outside the model: today's figure (issue 30, 2-core machine) and its target."""


def cores_per_gpu(results: dict, cpu_ms: tuple[float, ...]) -> list[dict]:
    """Per model: its best short-input cell's texts/s as one-input requests/s per GPU, and the CPU cores those
    requests need at each CPU cost per request."""
    rows = []
    for model in results["models"]:
        short = [c for c in model["cells"] if c["kind"] == "short"]
        if not short:
            continue
        best = max(short, key=lambda c: c["texts_per_s"])
        rows.append({
            "model": model["model"], "engine": model["engine"], "batch": best["batch"],
            "requests_per_s": best["texts_per_s"],
            "engine_host_cores": best["texts_per_s"] * best["host_cpu_ms_per_text"] / 1000,
            "cores": {f"{ms:g}": best["texts_per_s"] * ms / 1000 for ms in cpu_ms},
        })
    return rows


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def _num(x: float | None, fmt: str) -> str:
    return "n/a" if x is None else format(x, fmt)


def _cells_table(results: dict) -> list[str]:
    lines = [
        "| model | engine | input | batch | tokens/text | windows/text | passes/call | ms/call | texts/s | tokens/s "
        "| TFLOP/s | MFU | host CPU ms/text |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for model in results["models"]:
        for c in model["cells"]:
            passes = "" if c["passes_per_call"] is None else str(c["passes_per_call"])
            lines.append(
                f"| {model['model']} | {c['engine']} | {c['kind']} | {c['batch']} | {c['tokens_per_text']:.0f} "
                f"| {c['windows_per_text']:.1f} | {passes} | {c['ms_per_call']:.2f} | {c['texts_per_s']:,.1f} "
                f"| {c['tokens_per_s']:,.0f} | {c['tflops']:.2f} | {_pct(c['mfu'])} | {c['host_cpu_ms_per_text']:.3f} |"
            )
    return lines


def _models_table(results: dict) -> list[str]:
    lines = ["| model | engine | layers x hidden | window | weights | tokenizer | build s | load s | max_batch_tokens "
             "| least cosine vs float32 |", "|---|---|---|---:|---|---|---:|---:|---:|---:|"]
    for m in results["models"]:
        lines.append(
            f"| {m['model']} | {m['engine']} | {m['layers']} x {m['hidden']} | {m['window']} | {m['weights']} "
            f"| {m['tokenizer']} "
            f"| {m['build_s']:.1f} | {m['load_s']:.1f} | {m['max_batch_tokens']} "
            f"| {_num(m['cosine_vs_float32'], '.5f')} |"
        )
    return lines


def _cores_table(rows: list[dict], cpu_ms: tuple[float, ...]) -> list[str]:
    head = " | ".join(f"cores at {ms:g} ms/request" for ms in cpu_ms)
    lines = [f"| model | engine | best short batch | requests/s per GPU | {head} | engine process cores |",
             "|---|---|---:|---:|" + "---:|" * len(cpu_ms) + "---:|"]
    for r in rows:
        cores = " | ".join(f"{r['cores'][f'{ms:g}']:.1f}" for ms in cpu_ms)
        lines.append(f"| {r['model']} | {r['engine']} | {r['batch']} | {r['requests_per_s']:,.0f} | {cores} "
                     f"| {r['engine_host_cores']:.2f} |")
    return lines


def markdown(results: dict) -> str:
    """The report as markdown: where it ran, the models, every cell, the cores per GPU, what was skipped."""
    meta, cpu_ms = results["meta"], tuple(results["cpu_ms_per_request"])
    where = meta["gpu"] or f"CPU ({meta['cpu']}, {meta['cpu_count']} cores)"
    lines = [
        f"# GPU engine check: {where}",
        "",
        f"{meta['started']}; {meta['device']}, {meta['dtype']}; torch {meta['torch']}, transformers "
        f"{meta['transformers']}, Python {meta['python']}; host CPU {meta['cpu']} ({meta['cpu_count']} cores). "
        f"Peak (datasheet, dense fp16/bf16): {_num(meta['peak_tflops'], '.0f')} TFLOP/s; measured "
        f"8192^3 matmul: {_num(meta['measured_matmul_tflops'], '.0f')} TFLOP/s. {meta['seconds_per_cell']:g} s "
        f"per cell after warm-up; the run took {meta['run_s']:.0f} s.",
        "",
        *_models_table(results),
        "",
        *_cells_table(results),
        "",
        "CPU cores per GPU for one-input requests (the best short-input texts/s as requests/s, times the CPU cost "
        "per request outside the model, measured on the CPU machine); engine process cores: the CPU the engine's own "
        "process used in that cell (tokenising, launching, waiting), much of it already inside the per-request "
        "figure, which counts tokenising.",
        "",
        *_cores_table(results["cores_per_gpu"], cpu_ms),
    ]
    skipped = [s for s in results["skipped"]] + [s for m in results["models"] for s in m["skipped"]]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(
            f"{s['model']}" + (f" {s['kind']} batch {s['batch']}" if "kind" in s else "") + f" ({s['why']})"
            for s in skipped
        )]
    return "\n".join(lines) + "\n"


def finish(results: dict, cpu_ms: tuple[float, ...], out_dir: str) -> tuple[str, str]:
    """Add the cores per GPU, write ``gpu_engine.json`` and ``gpu_engine.md`` into ``out_dir``; their paths."""
    results["cpu_ms_per_request"] = list(cpu_ms)
    results["cores_per_gpu"] = cores_per_gpu(results, cpu_ms)
    os.makedirs(out_dir, exist_ok=True)
    json_path, md_path = os.path.join(out_dir, "gpu_engine.json"), os.path.join(out_dir, "gpu_engine.md")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    with open(md_path, "w", encoding="utf-8") as f:
        f.write(markdown(results))
    return json_path, md_path
