"""Learning from classified inputs without labels (FewShotLearner.learn_unlabeled, classifiers/fewshot/unlabeled.py).

Synthetic data: Gaussian clusters on the unit sphere with label vectors that point only roughly at their class (so
zero-shot makes mistakes the inputs can fix), no models, no Ray; milliseconds.
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

from classifiers.fewshot.learner import STATE_VERSION, FewShotLearner, _state_bytes
from classifiers.fewshot.learner_config import LearnerConfig

DIM, K, SCALE = 32, 4, 20.0


def unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def world(seed: int = 0, label_noise: float = 1.6):
    """Class centres, label vectors that point noisily toward them, and a sampler of (inputs, classes)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(K, DIM)))
    labels = unit(centres + label_noise * unit(rng.normal(size=(K, DIM))))

    def sample(n: int, seed: int, classes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        y = r.choice(K if classes is None else classes, size=n)
        return unit(centres[y] + 0.9 * unit(r.normal(size=(n, DIM)))).astype(np.float32), y

    return centres, labels, sample


def declared(labels: np.ndarray, config: LearnerConfig | None = None) -> FewShotLearner:
    lrn = FewShotLearner(DIM, score_scale=SCALE, config=config)
    lrn.declare({f"c{k}": labels[k] for k in range(K)})
    return lrn


def accuracy(lrn: FewShotLearner, X: np.ndarray, y: np.ndarray) -> float:
    cols = np.array([int(lab[1:]) for lab in lrn.labels])
    return float((cols[lrn.compile().predict_proba(X).argmax(1)] == y).mean())


def feed(lrn: FewShotLearner, X: np.ndarray, chunk: int = 50) -> int:
    return sum(lrn.learn_unlabeled(X[i: i + chunk]) for i in range(0, len(X), chunk))


def test_learning_moves_predictions_toward_the_truth_on_a_separable_stream():
    """Label vectors far from their classes (zero-shot 0.77 here): the inputs' own clusters must fix most of it."""
    _, labels, sample = world(label_noise=2.5)
    X, _ = sample(2000, seed=1)
    Xq, yq = sample(1000, seed=2)
    lrn = declared(labels)
    before = accuracy(lrn, Xq, yq)
    assert lrn.inputs_learned == 0 and lrn.learn_unlabeled(X[:0]) == 0
    assert feed(lrn, X) == 2000 and lrn.inputs_learned == 2000
    after = accuracy(lrn, Xq, yq)
    assert before < 0.8 and after >= before + 0.15, (before, after)
    # no statistics at all: exactly the zero-shot logits (the learner's contract for declared labels; it keeps the
    # label vectors as float32)
    fresh = declared(labels).compile()
    L32 = labels.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(fresh.decision_function(Xq), Xq.astype(np.float64) @ (SCALE * L32.T), rtol=1e-12,
                               atol=1e-12)


def test_a_labelled_example_outweighs_any_number_of_unlabelled_inputs():
    """Labelled examples of c1 sit where the zero-shot posterior (the anchor) says c0; 20,000 unlabelled inputs there
    pull c0's prototype onto them. The classifier must keep answering c1 where its labels say c1, whichever came
    first, although the adapted zero-shot part alone says c0 there."""
    centres, labels, sample = world(seed=3)
    labels = labels.copy()
    labels[0] = unit(centres[1] + 0.05 * labels[0])  # c0's label vector points at c1's inputs
    Xl, yl = sample(40, seed=4)
    Xu = sample(20000, seed=5, classes=np.array([1]))[0]
    names = [f"c{k}" for k in yl]
    first_labels = declared(labels)
    first_labels.update(Xl, names)
    feed(first_labels, Xu, chunk=256)
    first_inputs = declared(labels)
    feed(first_inputs, Xu, chunk=256)
    first_inputs.update(Xl, names)
    probe = Xl[yl == 1]
    for lrn in (first_labels, first_inputs):
        adapted = lrn._zero_shot()
        assert adapted is not None and ((probe @ adapted[0] + adapted[1]).argmax(1) == 0).all()
        assert lrn.labels[1] == "c1" and (lrn.compile().predict_proba(probe).argmax(1) == 1).mean() > 0.95
    # the unlabelled statistics never enter the labelled ones
    plain = declared(labels)
    plain.update(Xl, names)
    np.testing.assert_array_equal(first_inputs._n, plain._n)
    np.testing.assert_array_equal(first_inputs._S, plain._S)


def _through_json_and_npz(state: dict) -> dict:
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    scalars = json.loads(json.dumps({k: v for k, v in state.items() if k not in arrays}))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf) as z:
        return {**scalars, **{k: z[k] for k in z.files}}


def test_state_round_trip_keeps_inputs_learned_and_predictions():
    centres, labels, sample = world(seed=6)
    X, _ = sample(600, seed=7)
    Xl, yl = sample(24, seed=8)
    Xq, _ = sample(200, seed=9)
    lrn = declared(labels)
    feed(lrn, X)
    lrn.update(Xl, [f"c{k}" for k in yl])
    state = lrn.to_state()
    assert state["version"] == STATE_VERSION == 5 and state["inputs_learned"] == 600
    restored = FewShotLearner.from_state(_through_json_and_npz(state))
    assert restored.inputs_learned == 600
    a, b = lrn.compile(), restored.compile()
    np.testing.assert_array_equal(a.W, b.W)
    np.testing.assert_array_equal(a.b, b.b)
    more, _ = sample(100, seed=10)
    assert lrn.learn_unlabeled(more) == restored.learn_unlabeled(more) == 100  # and it goes on learning alike
    np.testing.assert_array_equal(lrn.compile().predict_proba(Xq), restored.compile().predict_proba(Xq))
    assert restored.inputs_learned == 700


def test_state_stays_bounded_with_100k_inputs_and_drift_is_limited():
    _, labels, sample = world(seed=11)
    lrn = declared(labels)
    empty = lrn.state_nbytes()
    assert empty == _state_bytes(DIM, K, True)
    X, _ = sample(100_000, seed=12)
    assert feed(lrn, X, chunk=256) == 100_000 and lrn.inputs_learned == 100_000
    assert lrn.state_nbytes() == empty  # no array grows with the inputs
    cfg = lrn.config
    assert (lrn._unl.n <= cfg.unlabeled_class_cap + 1e-9).all()  # per-class cap: old traffic fades
    shares = lrn._unl.shares(cfg)
    assert shares.max() <= cfg.unlabeled_max_share  # the label vector keeps its share of every prototype
    flat = np.concatenate([v.ravel() for v in lrn.to_state().values() if isinstance(v, np.ndarray)])
    assert np.all(np.isfinite(flat))


def test_version_4_states_load_with_nothing_learned_and_answer_as_before():
    _, labels, sample = world(seed=13)
    Xl, yl = sample(30, seed=14)
    Xq, _ = sample(100, seed=15)
    lrn = declared(labels)
    lrn.update(Xl, [f"c{k}" for k in yl])
    v4 = {k: v for k, v in lrn.to_state().items() if k not in ("unl_n", "unl_s", "inputs_learned")}
    v4["version"] = 4
    v4["config"] = {k: v for k, v in v4["config"].items() if not k.startswith("unlabeled_")}
    old = FewShotLearner.from_state(_through_json_and_npz(v4))
    assert old.inputs_learned == 0 and old._unl.empty
    np.testing.assert_array_equal(old.compile().predict_proba(Xq), lrn.compile().predict_proba(Xq))
    assert old.state_nbytes() == lrn.state_nbytes()
    X, _ = sample(100, seed=16)
    assert old.learn_unlabeled(X) == 100 and old.inputs_learned == 100


def test_wrong_shapes_and_values_are_refused_and_nothing_changes():
    _, labels, sample = world(seed=17)
    lrn = declared(labels)
    X, _ = sample(10, seed=18)
    for bad in (X[:, :-1], X[0], np.vstack([X[:2], np.full((1, DIM), np.nan)])):
        with pytest.raises(ValueError):
            lrn.learn_unlabeled(bad)
    assert lrn.inputs_learned == 0 and lrn._unl.empty


def test_without_a_zero_shot_part_nothing_is_learned():
    centres, labels, sample = world(seed=19)
    Xl, yl = sample(40, seed=20)
    lrn = FewShotLearner(DIM, score_scale=SCALE)  # examples only: no declared label, no zero-shot part
    lrn.update(Xl, [f"c{k}" for k in yl], label_vectors={f"c{k}": labels[k] for k in range(K)})
    before = lrn.to_state()
    assert lrn.learn_unlabeled(sample(50, seed=21)[0]) == 0 and lrn.inputs_learned == 0
    after = lrn.to_state()
    assert all(np.array_equal(before[k], after[k]) for k in before if isinstance(before[k], np.ndarray))


def test_order_and_chunking_do_not_matter_within_rounding():
    _, labels, sample = world(seed=22)
    X, _ = sample(900, seed=23)
    Xq, _ = sample(300, seed=24)
    a, b, c = declared(labels), declared(labels), declared(labels)
    feed(a, X, chunk=50)
    feed(b, X[np.random.default_rng(0).permutation(len(X))], chunk=8)
    c.learn_unlabeled(X)
    pa = a.compile().predict_proba(Xq)
    for other in (b, c):
        np.testing.assert_allclose(other.compile().predict_proba(Xq), pa, atol=1e-9)
        assert other.inputs_learned == 900


def test_traffic_of_one_class_leaves_the_others_near_their_label_vectors():
    """Per-class shares: inputs of c2 only move c2's prototype; where the anchor is confident (label vectors close to
    their classes, as the 150-way models are at their score scale) the others keep most of their label vector (a
    shared share moved absent classes onto their neighbours' inputs), and answers on all classes stay as good."""
    _, labels, sample = world(seed=25, label_noise=0.3)
    Xq, yq = sample(2000, seed=27)
    lrn = declared(labels)
    before = accuracy(lrn, Xq, yq)
    feed(lrn, sample(3000, seed=26, classes=np.array([2]))[0])
    cfg = lrn.config
    shares = lrn._unl.shares(cfg)
    assert shares[2] == pytest.approx(cfg.unlabeled_max_share)
    assert np.delete(shares, 2).max() < 0.5, shares
    assert lrn._unl.n[2] == pytest.approx(cfg.unlabeled_class_cap)  # capped: 3,000 inputs count as 1,000
    assert np.delete(lrn._unl.n, 2).sum() < 0.01 * 3000, lrn._unl.n
    assert accuracy(lrn, Xq, yq) >= before - 0.005


def test_no_prototype_moves_before_the_minimum_evidence():
    """Minimum evidence: below unlabeled_min_per_class inputs per class on average the answers are exactly the
    zero-shot ones (the statistics are kept); at it, they change."""
    _, labels, sample = world(seed=28, label_noise=2.5)
    X, _ = sample(100, seed=29)
    Xq, _ = sample(200, seed=30)
    lrn = declared(labels, LearnerConfig(unlabeled_min_per_class=10.0))  # 40 inputs for 4 classes
    zero_shot = lrn.compile().decision_function(Xq)
    assert lrn.learn_unlabeled(X[:39]) == 39 and not lrn._unl.empty
    np.testing.assert_array_equal(lrn.compile().decision_function(Xq), zero_shot)
    assert lrn.learn_unlabeled(X[39:41]) == 2
    assert np.abs(lrn.compile().decision_function(Xq) - zero_shot).max() > 0.1
