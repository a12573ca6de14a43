"""The few-shot learner (classifiers/fewshot/learner.py): one-pass sufficient statistics, invariances, state, prior gate.

Synthetic data: Gaussian clusters on the unit sphere (as sentence embeddings are), no models, no Ray.
"""
import io
import json

import numpy as np
import pytest

from classifiers.fewshot.learner import FewShotLearner
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


def test_compiled_predictor_scores_exactly_like_the_learner(data):
    X, y, centers, Xq, _ = data
    lrn = fit(X, y, chunks=2, priors=label_prior(centers))
    pred = lrn.compile()
    assert list(pred.labels) == lrn.labels
    assert np.array_equal(pred.predict_proba(Xq), lrn.predict_proba(Xq))
    assert pred.nbytes == 8 * (D * 6 + 6 + 2 * 6) and pred.nbytes < lrn.state_nbytes() / 10  # W, b, OOS mean/std
    lrn.update(X[:5], y[:5])  # later updates do not change an already compiled predictor
    assert not np.array_equal(pred.predict_proba(Xq), lrn.compile().predict_proba(Xq))
