"""Declared labels, zero-shot blending, out-of-scope scores (classifiers/fewshot/learner.py, classifiers/zeroshot/oos.py) and the
registry's label recipe. Synthetic clusters on the unit sphere; no models, no Ray."""
import numpy as np
import pytest

from classifiers.catalog.registry import BUILTIN_MODELS, ModelSpec, pool_label_vectors
from classifiers.fewshot.learner import FewShotLearner
from classifiers.fewshot.learner_config import LearnerConfig
from classifiers.zeroshot import oos
from tests.classifiers.fewshot.test_learner import D, _through_json_and_npz, clusters, label_prior, unit

SCALE = 20.0


@pytest.fixture(scope="module")
def world():
    X, y, centers = clusters(k=6, n=30, noise=3.0)
    Xq, yq, _ = clusters(k=6, n=15, seed=1, centers=centers, noise=3.0)
    labels = label_prior(centers, noise=0.5)  # informative label vectors (unit norm)
    far = unit(np.random.default_rng(7).normal(size=(40, D)))  # inputs near no class
    return X, y, Xq, yq, labels, far


def declared(labels, **cfg):
    lrn = FewShotLearner(D, score_scale=SCALE, config=LearnerConfig(**cfg))
    assert lrn.declare(labels) == list(labels)
    return lrn


def test_declared_only_is_exactly_zero_shot(world):
    *_, Xq, _, labels, _ = world
    lrn = declared(labels)
    L = np.stack([labels[k] for k in lrn.labels])
    z = SCALE * Xq @ L.T
    expect = np.exp(z - z.max(1, keepdims=True))
    expect /= expect.sum(1, keepdims=True)
    np.testing.assert_allclose(lrn.predict_proba(Xq), expect, atol=1e-6)  # label vectors are stored float32
    pred = lrn.compile()
    assert not pred.oos_calibrated and lrn.num_examples == 0
    assert lrn.counts == {k: 0.0 for k in labels}


def test_declared_classes_move_from_zero_shot_to_few_shot(world):
    X, y, Xq, yq, labels, _ = world
    yq = np.array(yq)
    acc = lambda m: float(np.mean(np.array(m.labels)[m.predict_proba(Xq).argmax(1)] == yq))  # noqa: E731
    lrn = declared(labels)
    zs = acc(lrn)
    # examples of only 3 classes: the other 3 are still predicted (from their label-name prior means)
    three = np.array([i for i, lab in enumerate(y) if lab in ("class 0", "class 1", "class 2")])
    lrn.update(X[three], [y[i] for i in three])
    pred = np.array(lrn.labels)[lrn.predict_proba(Xq).argmax(1)]
    unseen = np.isin(yq, ["class 3", "class 4", "class 5"])
    assert np.mean(pred[unseen] == yq[unseen]) > 0.6
    assert 0 < lrn.diagnostics["zero_shot_weight"] < 0.1
    lrn.update(np.delete(X, three, 0), [lab for i, lab in enumerate(y) if i not in set(three)])
    # with every class's examples it is (nearly) the learner without declared labels
    plain = FewShotLearner(D, score_scale=SCALE)
    plain.update(X, y, label_vectors=labels)
    assert acc(lrn) >= acc(plain) - 0.02 and acc(lrn) > zs - 0.01
    np.testing.assert_allclose(lrn.predict_proba(Xq)[:, np.argsort(lrn.labels)],
                               plain.predict_proba(Xq)[:, np.argsort(plain.labels)], atol=0.05)


def test_first_example_does_not_break_declared_classes(world):
    X, y, Xq, _, labels, _ = world
    lrn = declared(labels)
    before = lrn.predict_proba(Xq).argmax(1)
    lrn.update(X[:1], y[:1])  # one example of one class: no label-prior slope can be estimated yet
    after = lrn.predict_proba(Xq).argmax(1)
    assert np.mean(before == after) > 0.9  # the zero-shot blend carries the unseen classes
    nob = declared(labels, zero_shot_pseudo_count=0.0)
    nob.update(X[:1], y[:1])
    assert np.mean(nob.predict_proba(Xq).argmax(1) == before) < 0.5  # without the blend they collapse


def test_declare_then_state_round_trip_and_version_1_states_load(world):
    X, y, Xq, _, labels, _ = world
    lrn = declared(labels)
    lrn.update(X[:20], y[:20])
    restored = FewShotLearner.from_state(_through_json_and_npz(lrn.to_state()))
    assert np.array_equal(restored.predict_proba(Xq), lrn.predict_proba(Xq))
    assert restored.declare({"class 0": labels["class 0"]}) == []  # known: nothing added
    # a state written by the previous code (version 1: no `declared`, config without the new field)
    plain = FewShotLearner(D, score_scale=SCALE)
    plain.update(X, y, label_vectors=labels)
    v1 = plain.to_state()
    v1["version"] = 1
    del v1["declared"]
    v1["config"] = {k: v for k, v in v1["config"].items() if k != "zero_shot_pseudo_count"}
    old = FewShotLearner.from_state(_through_json_and_npz(v1))
    assert np.array_equal(old.predict_proba(Xq), plain.predict_proba(Xq))
    with pytest.raises(ValueError):
        FewShotLearner.from_state({**v1, "version": 99})


def test_declare_rejects_bad_vectors():
    lrn = FewShotLearner(8, score_scale=1.0)
    with pytest.raises(ValueError):
        lrn.declare({"a": np.ones(7)})
    with pytest.raises(ValueError):
        lrn.declare({"a": np.full(8, np.nan)})
    with pytest.raises(ValueError):
        LearnerConfig(max_classes=257)
    assert LearnerConfig(max_classes=256).max_classes == 256


def test_oos_score_separates_far_inputs_and_is_standardised(world):
    X, y, Xq, _, labels, far = world
    lrn = declared(labels)
    lrn.update(X, y)
    pred = lrn.compile()
    assert pred.oos_calibrated and pred.oos_mean.shape == (6,) and np.all(pred.oos_std > 0)
    s_in, s_out = pred.oos_score(Xq), pred.oos_score(far)
    assert oos.auroc(s_in, s_out) > 0.95
    assert abs(float(np.median(s_in))) < 2.0  # roughly standardised on in-scope inputs
    flags = oos.abstain(s_out, false_alarm_rate=0.05)
    assert flags.mean() > 0.8 and oos.abstain(s_in, false_alarm_rate=0.05).mean() < 0.3
    np.testing.assert_array_equal(pred.oos_score(Xq, logits=pred.decision_function(Xq)), s_in)


def test_fewshot_oos_score_falls_back_to_zero_shot_without_examples(world):
    *_, Xq, _, labels, far = world
    spec = ModelSpec(name="t", backend="hf", source="x", max_tokens=8, score_scale=SCALE,
                     oos_cosine_mean=0.3, oos_cosine_std=0.1)
    pred = declared(labels).compile()
    L = np.stack([labels[k] for k in pred.labels])
    np.testing.assert_allclose(oos.fewshot_oos_score(pred, Xq, spec), oos.zero_shot_oos_score(Xq @ L.T, spec), atol=1e-5)
    with pytest.raises(ValueError):
        oos.zero_shot_oos_score(Xq @ L.T, spec.model_copy(update={"oos_cosine_mean": None}))


def test_oos_metrics():
    assert oos.auroc([0, 1, 2], [3, 4]) == 1.0
    assert oos.auroc([3, 4], [0, 1, 2]) == 0.0
    assert oos.auroc([1, 1], [1, 1]) == 0.5
    assert oos.recall_at_inscope_recall(np.arange(100), np.array([50, 96, 99, 200]), 0.95) == 0.75
    assert oos.threshold(0.05) == pytest.approx(1.6449, abs=1e-4)
    with pytest.raises(ValueError):
        oos.abstain(np.zeros(2))
    with pytest.raises(ValueError):
        oos.threshold(0.0)
    fpr, tpr = oos.roc_curve([0, 1], [2, 3])
    assert fpr[0] == tpr[0] == 0 and fpr[-1] == tpr[-1] == 1


def test_256_classes_keep_the_full_covariance():
    lrn = FewShotLearner(384, score_scale=SCALE, config=LearnerConfig(max_classes=256))
    assert lrn.covariance == "full"
    X, y, _ = clusters(k=256, n=2, dim=384, seed=3)
    lrn.update(X, y)
    assert len(lrn.compile().labels) == 256
    # + 3 floats: the prequential out-of-scope record (count, sum, sum of squares); per class 2 x 32 floats of the
    # label record and 1 + 384 of the unlabelled statistics, and 41 floats of the temperature profile (its weight is a
    # scalar) plus 2 x 32 of the pooled record
    assert lrn.state_nbytes() == (8 * 384 * 385 // 2 + 256 * (8 + 8 * 384 + 4 * 384 + 1 + 1 + 2 * 32 * 8 + 8 + 8 * 384)
                                  + 3 * 8 + (41 + 2 * 32) * 8)
    assert FewShotLearner(1024, score_scale=SCALE).covariance == "diagonal"


def test_label_recipe_pooling_and_templates():
    v = np.array([[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_allclose(pool_label_vectors(v), [np.sqrt(0.5), np.sqrt(0.5)], atol=1e-6)
    np.testing.assert_allclose(pool_label_vectors(np.array([2.0, 0.0])), [1.0, 0.0])
    e5 = next(s for s in BUILTIN_MODELS if s.name == "multilingual-e5-small")
    assert e5.label_texts("book flight") == [t.replace("{label}", "book flight") for t in e5.label_templates]
    mini = next(s for s in BUILTIN_MODELS if s.name == "all-MiniLM-L6-v2")
    assert mini.label_texts("book flight") == ["book flight"]  # no recipe: the single template
    with pytest.raises(ValueError):
        ModelSpec(name="t", backend="hf", source="x", max_tokens=8, score_scale=1.0, label_templates=("no slot",))


def _zero_shot_spec(X, labels):
    """A model spec whose zero-shot OOS calibration is measured like the registry's: the in-scope max cosine
    between (training) inputs and the declared labels, its mean and deviation."""
    cos = (X @ np.stack(list(labels.values())).T).max(1)
    return ModelSpec(name="t", backend="hf", source="x", max_tokens=8, score_scale=SCALE,
                     oos_cosine_mean=float(cos.mean()), oos_cosine_std=float(cos.std()))


def test_declared_class_without_examples_is_judged_by_the_zero_shot_rule(world):
    """Examples of one declared class only: the label-prior slope cannot be estimated, so the other classes'
    prior means sit on the seen class's mean and their Gaussian calibration flags every input they win. The
    served score judges a winner without examples by the zero-shot rule on its label cosine instead."""
    X, y, Xq, yq, labels, far = world
    spec = _zero_shot_spec(X, labels)
    lrn = declared(labels)
    only = [i for i, lab in enumerate(y) if lab == "class 0"]
    lrn.update(X[only], [y[i] for i in only])
    pred = lrn.compile()
    others = np.array(yq) != "class 0"
    won = np.array(pred.labels)[pred.decision_function(Xq[others]).argmax(1)]
    assert np.mean(won == np.array(yq)[others]) > 0.8  # declared classes without examples are predicted
    assert list(pred.zs_classes) == [pred.labels.index(f"class {j}") for j in range(1, 6)]
    s_in = oos.fewshot_oos_score(pred, Xq[others], spec)
    assert oos.abstain(s_in, false_alarm_rate=0.05).mean() < 0.2
    assert oos.abstain(oos.fewshot_oos_score(pred, far, spec), false_alarm_rate=0.05).mean() > 0.8
    # the Gaussian score alone (what was served before) flags the unseen classes' own inputs
    assert oos.abstain(pred.oos_score(Xq[others]), false_alarm_rate=0.05).mean() > 0.8
    # a winner with examples keeps its few-shot score; once every class has examples no label vector is kept
    zq = pred.decision_function(Xq)
    to_seen = zq.argmax(1) == pred.labels.index("class 0")
    assert to_seen.sum() >= 10
    np.testing.assert_array_equal(oos.fewshot_oos_score(pred, Xq, spec)[to_seen], pred.oos_score(Xq)[to_seen])
    lrn.update(np.delete(X, only, 0), [lab for i, lab in enumerate(y) if i not in set(only)])
    assert lrn.compile().zs_classes is None


def test_prequential_record_calibrates_the_false_alarm_rate():
    """The Gaussian moments come from the training examples themselves (in-sample); the record of scores of
    inputs scored before they were learned corrects them (compile's oos_mean/oos_std are the Gaussian ones
    shifted and scaled by the record), keeps the held-out false-alarm rate at a 5% target within 1-10% and
    leaves the ranking (AUROC) unchanged. Training in one call (scored in growing chunks, in a shuffled order:
    this batch is sorted by class) and in batches of 8 both fill the record; predictions do not depend on it."""
    X, y, centers = clusters(k=8, n=150, noise=3.0, seed=11)
    Xq, _, _ = clusters(k=8, n=60, noise=3.0, seed=12, centers=centers)
    far = unit(np.random.default_rng(13).normal(size=(200, D)))
    order = np.random.default_rng(0).permutation(len(y))
    batched = FewShotLearner(D, score_scale=SCALE)
    for part in np.array_split(order, len(y) // 8):
        batched.update(X[part], [y[i] for i in part])
    one_call = FewShotLearner(D, score_scale=SCALE)
    one_call.update(X, y)
    cols = [batched.labels.index(lab) for lab in one_call.labels]
    np.testing.assert_allclose(one_call.predict_proba(Xq), batched.predict_proba(Xq)[:, cols], atol=1e-9)
    no_record = FewShotLearner(D, score_scale=SCALE, config=LearnerConfig(oos_record=False))
    no_record.update(X, y)  # the accuracy-only setting of the evaluation: same predictions, no record
    np.testing.assert_allclose(no_record.predict_proba(Xq), one_call.predict_proba(Xq), atol=1e-9)
    assert no_record.oos_correction == (0.0, 1.0)
    t = oos.threshold(0.05)
    for lrn in (batched, one_call):
        pred = lrn.compile()
        assert lrn._oos_moments[0] > 0.2 * len(y)  # a recency-weighted count of out-of-sample scores
        raw_mean, raw_std = lrn._oos_gaussian()
        shift, scale = lrn.oos_correction
        assert shift > 0.05 and scale > 1.02  # out of sample the in-scope scores are higher and wider
        np.testing.assert_allclose(pred.oos_mean, raw_mean - shift * raw_std)
        np.testing.assert_allclose(pred.oos_std, raw_std * scale)
        s_in, s_out = pred.oos_score(Xq), pred.oos_score(far)
        assert 0.01 <= np.mean(s_in > t) <= 0.10

        def raw(Z, raw_mean=raw_mean, raw_std=raw_std):
            k = Z.argmax(1)
            return (raw_mean[k] - Z[np.arange(len(k)), k]) / raw_std[k]

        assert oos.auroc(s_in, s_out) == pytest.approx(oos.auroc(raw(pred.decision_function(Xq)),
                                                                 raw(pred.decision_function(far))))


def test_states_without_the_record_load_and_use_the_gaussian_calibration(world):
    """Version-2 states (before the prequential record) still load; their calibration is the Gaussian one
    until updates add to the record."""
    X, y, Xq, _, labels, _ = world
    lrn = declared(labels)
    lrn.update(X, y)
    state = _through_json_and_npz(lrn.to_state())
    old = {k: v for k, v in state.items() if k != "oos_moments"} | {"version": 2}
    old["config"] = {k: v for k, v in old["config"].items() if k != "oos_calibration_pseudo_count"}
    restored = FewShotLearner.from_state(old)
    np.testing.assert_array_equal(restored.predict_proba(Xq), lrn.predict_proba(Xq))
    assert restored.oos_correction == (0.0, 1.0)
    mean, std = restored._oos_gaussian()
    np.testing.assert_allclose(restored.compile().oos_mean, mean)
    assert FewShotLearner.from_state(state).oos_correction == lrn.oos_correction != (0.0, 1.0)
