"""The few-shot learner (classifiers/fewshot/learner.py): one-pass sufficient statistics, invariances, state, prior gate.

Synthetic data: Gaussian clusters on the unit sphere (as sentence embeddings are), no models, no Ray.
"""
import io
import json

import numpy as np
import pytest

from classifiers.fewshot.calibration import share_log_odds
from classifiers.fewshot.learner import FewShotLearner, _state_bytes
from classifiers.fewshot.learner_config import LearnerConfig

D = 384


def clusters(k=6, n=20, dim=D, noise=3.0, seed=0, centers=None):
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = rng.normal(size=(k, dim)) / np.sqrt(dim)
    X, y = [], []
    for j, c in enumerate(centers):
        v = c + noise * rng.normal(size=(n, dim)) / np.sqrt(dim)
        X.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        y += [f"class {j}"] * n
    return np.concatenate(X), y, centers


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def label_prior(centers, seed=5, noise=1.0):
    """Label embeddings that point (noisily) toward their class: an informative label-name prior."""
    rng = np.random.default_rng(seed)
    return {f"class {j}": unit(c + noise * rng.normal(size=c.shape) / np.sqrt(len(c))) for j, c in enumerate(centers)}


def fit(X, y, chunks=1, order=None, weight=1.0, priors=None, config=None, dim=D):
    lrn = FewShotLearner(dim, score_scale=20.0, config=config)
    idx = np.arange(len(y)) if order is None else order
    for part in np.array_split(idx, chunks):
        ys = [y[i] for i in part]
        lv = None if priors is None else {lab: priors[lab] for lab in sorted(set(ys)) if lab in priors}
        lrn.update(X[part], ys, weight=weight, label_vectors=lv)
    return lrn


def aligned(lrn, X):
    """Probabilities with columns sorted by label name (learners may have seen classes in different orders)."""
    p = lrn.predict_proba(X)
    return p[:, np.argsort(lrn.labels)]


@pytest.fixture(scope="module")
def data():
    X, y, centers = clusters()
    Xq, yq, _ = clusters(n=10, seed=1, centers=centers)
    return X, y, centers, Xq, yq


def test_order_invariance(data):
    X, y, centers, Xq, _ = data
    priors = label_prior(centers)
    a = fit(X, y, priors=priors)
    b = fit(X, y, order=np.random.default_rng(3).permutation(len(y)), priors=priors)
    assert sorted(a.labels) == sorted(b.labels)
    np.testing.assert_allclose(aligned(a, Xq), aligned(b, Xq), rtol=0, atol=1e-9)
    assert not np.allclose(aligned(a, Xq), 1.0 / 6)  # not trivially uniform


def test_split_invariance_one_call_vs_five(data):
    X, y, centers, Xq, _ = data
    priors = label_prior(centers)
    one = fit(X, y, chunks=1, priors=priors)
    five = fit(X, y, chunks=5, priors=priors)
    np.testing.assert_allclose(aligned(one, Xq), aligned(five, Xq), rtol=0, atol=1e-9)


def test_weight_is_repetition_without_extra_work(data):
    X, y, centers, Xq, _ = data
    priors = label_prior(centers)
    twice = FewShotLearner(D, score_scale=20.0)
    twice.update(X, y, weight=1.0, label_vectors=priors)
    twice.update(X, y, weight=1.0)
    double = fit(X, y, weight=2.0, priors=priors)
    np.testing.assert_allclose(twice.predict_proba(Xq), double.predict_proba(Xq), rtol=0, atol=1e-9)
    # and the weight really counts: data weighted 10x overrides the prior more than weight 1
    light = fit(X, y, weight=1.0, priors=priors)
    assert double.counts["class 0"] == 2 * light.counts["class 0"]
    assert not np.allclose(light.predict_proba(Xq), double.predict_proba(Xq), atol=1e-6)


def test_new_class_in_a_later_update_is_learned_and_predicted(data):
    X, y, _, Xq, yq = data
    yarr = np.array(y)
    first = yarr != "class 5"
    lrn = FewShotLearner(D, score_scale=20.0)
    lrn.update(X[first], list(yarr[first]))
    assert "class 5" not in lrn.labels
    assert lrn.predict_proba(Xq).shape == (len(yq), 5)
    lrn.update(X[~first], list(yarr[~first]))
    assert lrn.labels[-1] == "class 5" and len(lrn.labels) == 6
    p = lrn.predict_proba(Xq)
    np.testing.assert_allclose(p.sum(1), 1.0, atol=1e-12)
    pred = np.array(lrn.labels)[p.argmax(1)]
    new = np.array(yq) == "class 5"
    assert np.mean(pred[new] == "class 5") >= 0.9
    assert np.mean(pred == np.array(yq)) >= 0.9


def test_labels_keep_insertion_order():
    lrn = FewShotLearner(8, score_scale=1.0)
    X = unit(np.random.default_rng(0).normal(size=(4, 8)))
    lrn.update(X[:2], ["zeta", "alpha"])
    lrn.update(X[2:], ["mid", "zeta"])
    assert lrn.labels == ["zeta", "alpha", "mid"]
    assert lrn.predict_proba(X).shape == (4, 3)


def _through_json_and_npz(state: dict) -> dict:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    scalars = json.loads(json.dumps(scalars))  # JSON-able, or this raises
    with np.load(io.BytesIO(buf.getvalue()), allow_pickle=False) as z:
        return {**scalars, **{k: z[k] for k in z.files}}


@pytest.mark.parametrize("covariance", ["full", "diagonal"])
def test_state_round_trip_gives_identical_predictions(data, covariance):
    X, y, centers, Xq, _ = data
    cfg = LearnerConfig(covariance=covariance, prior_strength=3.0)
    lrn = fit(X, y, chunks=3, priors=label_prior(centers), config=cfg, weight=0.7)
    restored = FewShotLearner.from_state(_through_json_and_npz(lrn.to_state()))
    assert restored.labels == lrn.labels and restored.config == lrn.config
    assert np.array_equal(restored.predict_proba(Xq), lrn.predict_proba(Xq))
    # a restored learner keeps learning exactly like the original
    X2, y2, _ = clusters(k=7, n=4, seed=9)
    lrn.update(X2, y2, label_vectors={"class 6": unit(np.ones(D))})
    restored.update(X2, y2, label_vectors={"class 6": unit(np.ones(D))})
    assert np.array_equal(restored.predict_proba(Xq), lrn.predict_proba(Xq))


def test_no_examples_are_stored_state_size_is_constant(data):
    X, y, centers, _, _ = data
    rng = np.random.default_rng(0)
    small = fit(X[:60], y[:60], priors=label_prior(centers))  # 60 examples (classes 0-2)
    big_X, big_y, _ = clusters(k=3, n=400, seed=2, centers=centers[:3])
    big = fit(big_X, big_y, chunks=7, priors=label_prior(centers))  # 1200 examples, same classes
    s1, s2 = small.to_state(), big.to_state()
    assert set(s1) == set(s2)
    for k, v in s1.items():
        if isinstance(v, np.ndarray):
            assert v.shape == s2[k].shape, k
            assert 1200 not in v.shape and 400 not in v.shape
    assert small.state_nbytes() == big.state_nbytes()
    # no stored row equals an input embedding
    flat = [np.atleast_2d(v) for v in s2.values() if isinstance(v, np.ndarray) and v.ndim == 2]
    for arr in flat:
        if arr.shape[1] == D:
            assert np.min(np.abs(arr[:, None, :] - big_X[rng.choice(1200, 50)][None]).max(-1)) > 1e-6


def test_state_fits_one_megabyte_at_dim_384_with_16_classes():
    X, y, _ = clusters(k=16, n=3)
    lrn = fit(X, y, priors={lab: X[i] for i, lab in enumerate(y)})
    assert lrn.covariance == "full"
    assert lrn.state_nbytes() <= 1_000_000
    big = FewShotLearner(1024, score_scale=30.0)  # documented fallback for large models
    assert big.covariance == "diagonal"
    Xb, yb, _ = clusters(k=16, n=3, dim=1024)
    big.update(Xb, yb)
    assert big.state_nbytes() <= 1_000_000
    assert np.mean(np.array(big.labels)[big.predict_proba(Xb).argmax(1)] == np.array(yb)) > 0.9


@pytest.mark.parametrize("weight", [1.0, 10.0])
def test_label_prior_gate_switches_off_for_random_label_vectors(weight):
    X, y, centers = clusters(noise=4.0)
    Xq, yq, _ = clusters(n=10, seed=1, centers=centers, noise=4.0)
    two = np.array([i for j in range(6) for i in range(j * 20, j * 20 + 2)])  # 2 examples per class
    Xs, ys = X[two], [y[i] for i in two]
    plain = fit(Xs, ys, priors=None, weight=weight)
    for seed in range(100, 110):  # (seed 0 would replay the stream that drew the cluster centres)
        rng = np.random.default_rng(seed)
        random_vecs = {lab: unit(rng.normal(size=D)) for lab in sorted(set(ys))}
        gated = fit(Xs, ys, priors=random_vecs, weight=weight)
        assert gated.diagnostics["gate"] * abs(gated.diagnostics["beta"]) < 0.05
        np.testing.assert_allclose(aligned(gated, Xq), aligned(plain, Xq), atol=0.05)
    if weight == 1.0:  # an informative prior opens the gate and helps
        informed = fit(Xs, ys, priors=label_prior(centers), weight=weight)
        assert informed.diagnostics["gate"] > 0.9
        acc = lambda m: np.mean(np.array(m.labels)[m.predict_proba(Xq).argmax(1)] == np.array(yq))  # noqa: E731
        assert acc(informed) > acc(plain) + 0.1


def test_missing_label_vectors_mean_no_prior(data):
    X, y, centers, Xq, _ = data
    a = fit(X, y, priors=None)
    b = fit(X, y, priors={"class 0": unit(centers[0])})  # one vector: nothing to regress on
    np.testing.assert_allclose(aligned(a, Xq), aligned(b, Xq), atol=1e-12)


def test_bad_inputs_are_rejected():
    lrn = FewShotLearner(8, score_scale=1.0)
    with pytest.raises(ValueError):
        lrn.predict_proba(np.zeros((1, 8)))
    with pytest.raises(ValueError):
        lrn.update(np.zeros((2, 7)), ["a", "b"])
    with pytest.raises(ValueError):
        lrn.update(np.zeros((2, 8)), ["a"])
    with pytest.raises(ValueError):
        lrn.update(unit(np.ones((1, 8))), ["a"], weight=0.0)
    with pytest.raises(ValueError):
        lrn.update(np.full((1, 8), np.nan), ["a"])
    lrn.update(unit(np.ones((1, 8))), ["a"])
    assert lrn.predict_proba(unit(np.ones((2, 8)))).tolist() == [[1.0], [1.0]]


def test_compiled_predictor_scores_like_the_learner_at_its_calibration_temperature(data):
    X, y, centers, Xq, _ = data
    lrn = fit(X, y, chunks=2, priors=label_prior(centers))
    pred = lrn.compile()
    tau = lrn.calibration_temperature
    assert list(pred.labels) == lrn.labels and tau != 1.0
    np.testing.assert_allclose(pred.decision_function(Xq), lrn.decision_function(Xq) / tau, rtol=1e-12, atol=1e-12)
    assert np.array_equal(pred.predict_proba(Xq).argmax(1), lrn.predict_proba(Xq).argmax(1))
    # W, b, OOS mean/std (K each), the label map (32) and the label cuts (K)
    assert pred.nbytes == 8 * (D * 6 + 6 + 2 * 6 + 32 + 6) and pred.nbytes < lrn.state_nbytes() / 10
    lrn.update(X[:5], y[:5])  # later updates do not change an already compiled predictor
    assert not np.array_equal(pred.predict_proba(Xq), lrn.compile().predict_proba(Xq))


# ---------------------------------------------------------------- calibrated scores and multi-label (issue 28)
def ece(p, truth, bins=10):
    """Expected calibration error of the top score (10 equal-width bins)."""
    conf, right = p.max(1), p.argmax(1) == truth
    b = np.minimum((conf * bins).astype(int), bins - 1)
    return sum(abs(conf[b == i].mean() - right[b == i].mean()) * np.mean(b == i) for i in range(bins) if (b == i).any())


def stream(lrn, X, y, batches, seed=0):
    for part in np.array_split(np.random.default_rng(seed).permutation(len(y)), batches):
        lrn.update(X[part], [y[i] for i in part])
    return lrn


def test_temperature_record_fixes_an_over_confident_model():
    X, y, centers = clusters(k=8, n=40, noise=3.0, dim=64)
    Xq, yq, _ = clusters(k=8, n=40, noise=3.0, seed=1, centers=centers, dim=64)
    lrn = stream(FewShotLearner(64, score_scale=20.0, config=LearnerConfig(temperature=1.0)), X, y, 40)
    truth = np.array([lrn.labels.index(lab) for lab in yq])
    raw, calibrated = lrn.predict_proba(Xq), lrn.compile().predict_proba(Xq)
    assert lrn.calibration_temperature > 1.3 and lrn.diagnostics["calibration_temperature"] > 1.3
    assert raw.max(1).mean() > calibrated.max(1).mean()  # less confident ...
    assert ece(calibrated, truth) < ece(raw, truth) - 0.02  # ... and better calibrated
    assert np.array_equal(raw.argmax(1), calibrated.argmax(1))


def test_records_never_change_the_argmax_and_off_means_the_old_predictor(data):
    X, y, centers, Xq, _ = data
    on = stream(FewShotLearner(D, score_scale=20.0), X, y, 7)
    off = stream(FewShotLearner(D, score_scale=20.0, config=LearnerConfig(oos_record=False)), X, y, 7)
    p_on, p_off = on.compile(), off.compile()
    assert on.calibration_temperature != 1.0 and p_on.label_map is not None
    # the statistics do not see the records: the model's own scores are the same, and the argmax is bit-identical
    np.testing.assert_allclose(on.predict_proba(Xq), off.predict_proba(Xq), rtol=0, atol=1e-12)
    far = unit(np.random.default_rng(4).normal(size=(200, D)))  # also off the data, where classes are close
    for Z in (Xq, far):
        assert np.array_equal(p_on.predict_proba(Z).argmax(1), p_off.predict_proba(Z).argmax(1))
        assert np.array_equal(p_on.predict_proba(Z).argmax(1), on.predict_proba(Z).argmax(1))
    # with the records off, the predictor is the old one: W and b straight from the fit, no label calibration
    A, b = off._fit()
    assert np.array_equal(p_off.W, A) and np.array_equal(p_off.b, b) and off.calibration_temperature == 1.0
    assert p_off.label_map is None and p_off.label_cuts is None and p_off.multi_label(Xq @ A + b, None) is None


def test_oos_score_is_unchanged_by_the_temperature(data):
    X, y, _, Xq, _ = data
    lrn = stream(FewShotLearner(D, score_scale=20.0), X, y, 5)
    pred = lrn.compile()
    mean, std = lrn._gaussian_moments()
    shift, scale = lrn.oos_correction
    z = lrn.decision_function(Xq)  # the model's logits: the OOS score in its own units
    k = z.argmax(1)
    raw = ((mean - shift * std)[k] - z[np.arange(len(k)), k]) / (std * scale)[k]
    np.testing.assert_allclose(pred.oos_score(Xq), raw, rtol=1e-9, atol=1e-9)


def multi_label_data(n, K=6, seed=0, centers=None, noise=1.5, dim=D):
    """Inputs with 1-3 labels each: the normalised sum of their classes' centres plus noise."""
    rng = np.random.default_rng(seed)
    if centers is None:
        centers = unit(rng.normal(size=(K, dim)))
    ys, X = [], []
    for _ in range(n):
        labs = sorted(rng.choice(K, size=rng.choice([1, 1, 2, 3]), replace=False))
        X.append(centers[labs].sum(0) + noise * rng.normal(size=dim) / np.sqrt(dim))
        ys.append([f"class {j}" for j in labs])
    return unit(np.array(X)), ys, centers


def test_label_lists_count_each_pair_and_equal_the_expanded_pairs():
    X, ys, _ = multi_label_data(40)
    lrn = FewShotLearner(D, score_scale=20.0)
    lrn.update(X[:3], [["class 0", "class 1", "class 0"], "class 0", ("class 1",)])
    assert lrn.counts == {"class 0": 2.0, "class 1": 2.0} and lrn.num_examples == 4.0
    lists = FewShotLearner(D, score_scale=20.0)
    lists.update(X, ys, weight=0.5)
    rows = [i for i, labs in enumerate(ys) for _ in labs]
    pairs = FewShotLearner(D, score_scale=20.0)
    pairs.update(X[rows], [lab for labs in ys for lab in labs], weight=0.5)
    assert lists.counts == pairs.counts and lists.num_examples == 0.5 * len(rows)
    cols = [pairs.labels.index(lab) for lab in lists.labels]
    np.testing.assert_allclose(lists.predict_proba(X), pairs.predict_proba(X)[:, cols], atol=1e-9)
    # bad labels are refused before anything changes
    for bad in ([[]], [None], [["class 9", 3]], [7]):
        with pytest.raises(ValueError):
            lists.update(X[:1], bad)
    assert "class 9" not in lists.labels and lists.counts == pairs.counts


def f1(Y, P):
    tp = (Y & P).sum()
    return 2 * tp / max(Y.sum() + P.sum(), 1)


def test_multi_label_answers_shapes_monotonicity_and_learned_cuts():
    # hard, overlapping labels (top-1 right ~40% of the time), where a calibrated q rarely reaches 0.5
    X, ys, centers = multi_label_data(960, K=12, noise=5.0, dim=64)
    Xq, yq, _ = multi_label_data(400, K=12, seed=1, centers=centers, noise=5.0, dim=64)
    lrn = FewShotLearner(64, score_scale=20.0)
    for part in np.array_split(np.arange(len(ys)), 120):  # batches of 8
        lrn.update(X[part], [ys[i] for i in part])
    pred = lrn.compile()
    K = len(lrn.labels)
    Y = np.array([[lab in labs for lab in lrn.labels] for labs in yq])
    z = pred.decision_function(Xq)
    q = pred.label_probs(z)
    assert q.shape == (len(Xq), K) and np.all((q > 0) & (q < 1)) and pred.label_cuts.shape == (K,)
    bump = z.copy()
    bump[:, 0] += 1.0  # a label's own probability never falls when its logit rises
    assert np.all(pred.label_probs(bump)[:, 0] >= q[:, 0])
    loose, strict = pred.multi_label(z, 0.2), pred.multi_label(z, 0.6)
    assert loose.dtype == bool and loose.shape == (len(Xq), K) and np.all(loose >= strict)
    np.testing.assert_array_equal(loose, q >= 0.2)
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ValueError):
            pred.multi_label(z, bad)
    learned = pred.multi_label(z, None)
    assert learned.shape == (len(Xq), K)
    np.testing.assert_array_equal(learned, share_log_odds(z) >= pred.label_cuts)  # the cuts are on u
    assert f1(Y, learned) > f1(Y, q >= 0.5) + 0.1  # learned per-label cuts beat one fixed cut at 0.5
    assert f1(Y, learned) > f1(Y, np.eye(K, dtype=bool)[z.argmax(1)])  # and the top label alone
    # a single-label classifier answers in multi-label mode too
    Xs, ysingle, _ = clusters(k=4, n=30, dim=64)
    single = stream(FewShotLearner(64, score_scale=20.0), Xs, ysingle, 15).compile()
    assert single.label_map is not None and single.multi_label(single.decision_function(Xs), None).any(1).mean() > 0.8


def test_state_round_trip_keeps_the_records_and_version_3_states_answer_as_before():
    d = 64
    X, ys, centers = multi_label_data(200, dim=d)
    Xq, _, _ = multi_label_data(50, seed=1, centers=centers, dim=d)
    lrn = FewShotLearner(d, score_scale=20.0)
    for part in np.array_split(np.arange(len(ys)), 10):
        lrn.update(X[part], [ys[i] for i in part])
    state = lrn.to_state()
    assert state["version"] == 5 and state["label_hist"].shape == (len(lrn.labels), 2, 32)
    assert lrn.state_nbytes() == _state_bytes(d, len(lrn.labels), True)  # the budget formula is exact
    restored = FewShotLearner.from_state(_through_json_and_npz(state))
    a, b = lrn.compile(), restored.compile()
    for field in ("W", "b", "oos_mean", "oos_std", "label_map", "label_cuts"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    more, more_y, _ = multi_label_data(30, seed=2, centers=centers, dim=d)
    lrn.update(more, more_y)
    restored.update(more, more_y)  # and it goes on recording exactly like the original
    assert np.array_equal(lrn.compile().label_cuts, restored.compile().label_cuts)
    assert lrn.calibration_temperature == restored.calibration_temperature
    # a version-3 state (before the records): tau = 1, no label calibration, the old predictor exactly
    v3 = {k: v for k, v in state.items() if k not in ("temp_profile", "temp_weight", "label_pooled", "label_hist")}
    v3["version"] = 3
    v3["config"] = {k: v for k, v in v3["config"].items() if "calibration" not in k or k.startswith("oos")}
    old = FewShotLearner.from_state(_through_json_and_npz(v3))
    p = old.compile()
    A, bias = old._fit()
    assert old.calibration_temperature == 1.0 and np.array_equal(p.W, A) and np.array_equal(p.b, bias)
    assert p.label_map is None and p.label_cuts is None and p.multi_label(p.decision_function(Xq), None) is None
    np.testing.assert_array_equal(p.label_probs(p.decision_function(Xq)), p.predict_proba(Xq))  # the share
    assert np.array_equal(p.predict_proba(Xq), old.predict_proba(Xq))
    assert old.state_nbytes() == lrn.state_nbytes()  # it now carries (empty) records


def test_records_score_at_most_512_rows_per_chunk_and_start_on_declared_labels():
    X, y, _ = clusters(k=2, n=1000, seed=7, dim=32)
    lrn = FewShotLearner(32, score_scale=20.0, config=LearnerConfig(calibration_recency=0.0,
                                                                     label_calibration_recency=0.0))
    lrn.update(X, y)  # one call: chunks of 8, 8, 16, ..., 512, then 976 rows
    assert lrn._temp.weight == 8 + 16 + 32 + 64 + 128 + 256 + 512 + 512
    assert lrn._label_rec.pooled[0].sum() == 2 * lrn._temp.weight  # each scored row is a pair per known class
    decl = FewShotLearner(32, score_scale=20.0)
    decl.declare({"class 0": unit(X[0]), "class 1": unit(X[-1])})
    decl.update(X[:8], y[:8])  # scored by the zero-shot logits before its first example
    assert decl._temp.weight == 8 and decl.num_examples == 8
