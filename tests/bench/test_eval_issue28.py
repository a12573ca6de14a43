"""Issue 28's evaluation code on synthetic data: the multi-label metrics and split of bench/eval_multilabel.py,
the LR bound, the pooled-ECE bookkeeping, targets and accuracy check of bench/eval_calibration.py, and the
reliability diagram. Nothing here embeds text or reads the shared data sets."""
from __future__ import annotations

import numpy as np
import pytest

from bench import eval_calibration as cal
from bench import eval_multilabel as ml
from classifiers.zeroshot.calibrate import ece10


# ------------------------------------------------------------------------------------------ multi-label
def test_split_is_fixed_disjoint_and_sorted():
    train, test = ml.split(5426)
    assert (len(train), len(test)) == (3256, 2170)
    assert not set(train) & set(test) and len(set(train) | set(test)) == 5426
    assert (np.diff(train) > 0).all() and (np.diff(test) > 0).all()
    again = ml.split(5426)
    assert np.array_equal(again[0], train) and np.array_equal(again[1], test)


def test_f1_metrics_by_hand():
    Y = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0]], bool)
    P = np.array([[1, 0, 0], [1, 0, 1], [0, 1, 0]], bool)
    # tp 3, |Y| 4, |P| 4
    assert ml.micro_f1(Y, P) == pytest.approx(6 / 8)
    # label 0: 2tp/(2+2) = 1; label 1: 2/(2+1); label 2 never true: left out of the mean
    assert ml.macro_f1(Y, P) == pytest.approx((1 + 2 / 3) / 2)
    assert ml.micro_f1(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 0.0
    T = ml.top1(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]))
    assert T.tolist() == [[False, True, False], [True, False, False]]
    s = ml.scores(Y, np.zeros_like(P))
    assert s["empty"] == 1.0 and s["labels"] == 0.0


def test_read_goemotions_layout(tmp_path):
    (tmp_path / "emotions.txt").write_text("joy\nanger\nfear", encoding="utf-8")
    (tmp_path / "dev.tsv").write_text("so happy\t0\tid1\nangry and scared\t1,2\tid2\n", encoding="utf-8")
    names, texts, Y = ml.read(tmp_path)
    assert names == ["joy", "anger", "fear"] and texts == ["so happy", "angry and scared"]
    assert Y.tolist() == [[True, False, False], [False, True, True]]
    assert ml._labels_of(Y[0], names) == "joy" and ml._labels_of(Y[1], names) == ["anger", "fear"]


def test_lr_bound_separable_labels_and_constant_labels():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4))
    Y = np.stack([X[:, 0] > 0, X[:, 1] > 0, np.zeros(120, bool)], 1)
    Y[0, 2] = True  # label 2: one positive in the test rows only
    best = ml.lr_bound(X[60:], Y[60:], X[:60], Y[:60])
    assert best["micro"] > 0.9 and best["macro"] > 0.5
    assert set(best["macro_at"]) == {"C", "class_weight", "threshold"}


def test_calibration_of_perfect_probabilities_is_zero():
    Y = np.array([[1, 0], [0, 1]], bool)
    c = ml.calibration(Y, Y.astype(float), Y.astype(float))
    assert c["ece_ml"] == 0.0 and c["ece_single"] == 0.0 and c["acc_single"] == 1.0


def _ml_result(macro_ours: float, macro_lr: float, zs_micro: float, top1_micro: float) -> dict:
    run = {"rule": {"micro": 0.4, "macro": macro_ours, "labels": 1.5}, "top1": {"micro": 0.3, "macro": 0.2},
           "ece_ml": 0.01, "ece_ml_high": 0.02, "ece_single": 0.03, "acc_single": 0.4, "conf_single": 0.4,
           "learned_cuts": True}
    lr = {"micro": 0.45, "macro": macro_lr}
    labs = ["64", "1024", "all"]
    return {"checkpoints": labs, "few_shot": [{lab: run for lab in labs}], "lr": [{lab: lr for lab in labs}],
            "zero_shot": {"rule": {"micro": zs_micro}, "top1": {"micro": top1_micro}, "threshold": 0.125}}


def test_multilabel_targets():
    rows = ml.targets(_ml_result(0.30, 0.31, 0.17, 0.14))
    assert [ok for _, ok, _ in rows] == [True, True]
    rows = ml.targets(_ml_result(0.20, 0.31, 0.13, 0.14))
    assert [ok for _, ok, _ in rows] == [False, False]
    assert "below the bar" in rows[0][2]


# ------------------------------------------------------------------------------------------ calibration
def test_reliability_points_add_up_to_the_ece():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0, 1, 500)
    hit = rng.uniform(0, 1, 500) < conf ** 2
    pts = cal.reliability(conf, hit)
    assert sum(n for _, _, n in pts) == 500
    assert sum(abs(f - c) * n for c, f, n in pts) / 500 == pytest.approx(ece10(conf, hit))
    merged = cal.pool_reliability([pts, pts])
    assert [n for _, _, n in merged] == [2 * n for _, _, n in pts]
    assert np.allclose([p[:2] for p in merged], [p[:2] for p in pts])


def test_pooled_ece_pools_parts_then_averages_seeds():
    p = cal.Pooled()
    p.add(0, np.array([0.9, 0.9]), np.array([True, False]))
    p.add(0, np.array([0.6]), np.array([True]))
    p.add(1, np.array([1.0]), np.array([True]))
    s = p.summary()
    seed0 = ece10(np.array([0.9, 0.9, 0.6]), np.array([1, 0, 1]))
    assert s["ece_per_seed"] == pytest.approx([seed0, 0.0])
    assert s["ece"] == pytest.approx(seed0 / 2) and s["n"] == 2


def _summary(ece: float, n: int) -> dict:
    return {"ece": ece, "acc": 0.9, "conf": 0.9, "n": n, "ece_per_seed": [ece], "reliability": []}


def test_calibration_targets_and_information_rows():
    few = {"seen": {"16": _summary(0.03, 100), "64": _summary(0.02, 300)},
           "all": {"16": _summary(0.30, 1000), "64": _summary(0.04, 1000)},
           "declared": {"16": _summary(0.06, 1000), "64": _summary(0.02, 1000)}}
    result = {"zero_shot": {"per domain": _summary(0.04, 1950)},
              "few_shot": {"per domain": few}}
    rows = {what: ok for what, ok, _ in cal.targets(result)}
    assert rows["ECE <= 0.05 zero-shot, per domain"]
    assert rows["ECE <= 0.05 few-shot, per domain, seen classes, from 16 examples on"]
    # coverage at 64 is 30 %: the 'all' row is shown for information, and says why
    info_all = next(w for w in rows if "all classes, from 64" in w)
    assert "information" in info_all and "30%" in info_all and rows[info_all]
    declared = next(w for w in rows if "declared" in w)
    assert "information" in declared and not rows[declared]
    assert cal.coverage(few, "64") == pytest.approx(0.3)


def test_accuracy_check_flags_a_changed_accuracy():
    def report(acc_ours):
        return {"models": {"m": {"runs": {"per domain": {"labels": ["8", "16"], "res": {"acc": {
            "ours": [[0.8, acc_ours], [0.8, acc_ours]], "PA": [[0.5, 0.6], [0.5, 0.6]]}}}}}}}

    new = report(0.903)["models"]
    (row,) = cal.accuracy_check(new, report(0.9))
    assert row[2] and "+0.0030" in row[3]
    (row,) = cal.accuracy_check(report(0.91)["models"], report(0.9))
    assert not row[2] and "ours at 16 examples" in row[3]
    assert cal.accuracy_check(new, None) == []


def test_reliability_diagram_png(tmp_path):
    pts = [[0.25, 0.2, 10], [0.85, 0.9, 30]]
    by = {p: {"16": {**_summary(0.02, 10), "reliability": pts}, "64": {**_summary(0.02, 10), "reliability": pts}}
          for p in cal.PROTOCOLS}
    info = {"calibration": {"zero_shot": {"per domain": {"reliability": pts}}, "few_shot": {"per domain": by}}}
    path = tmp_path / "r.png"
    assert cal.plot_reliability("m", info, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not cal.plot_reliability("m", {}, tmp_path / "none.png")
