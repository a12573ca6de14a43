"""The calibration records of the few-shot learner (classifiers/fewshot/calibration.py): the exact NLL profile,
the temperature record, share log-odds, the isotonic label map, per-label cuts, and label lists -> pairs.

Synthetic logits with a known truth; no learner, no models, milliseconds.
"""
import numpy as np
import pytest

from classifiers.fewshot import calibration as cal
from classifiers.fewshot.calibration import LabelRecord, TemperatureRecord


def softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def sampled(n=4000, K=6, scale=2.0, seed=0):
    """Logits z_true and labels drawn from softmax(z_true): a calibrated truth."""
    rng = np.random.default_rng(seed)
    z = scale * rng.normal(size=(n, K))
    p = softmax(z)
    t = (p.cumsum(1) > rng.random((n, 1))).argmax(1)
    return z, t


def test_nll_profile_is_the_exact_nll_at_every_grid_temperature():
    z, t = sampled(n=300, K=5)
    prof = cal.nll_profile(z, t)
    brute = [-np.log(softmax(z / np.exp(g))[np.arange(len(t)), t]).sum() for g in cal.LOG_TAU_GRID]
    np.testing.assert_allclose(prof, brute, rtol=1e-10)
    assert len(cal.LOG_TAU_GRID) == 41 and cal.LOG_TAU_GRID[16] == 0.0  # tau = 1 is a grid point


def test_set_profile_equals_the_single_label_one_and_the_brute_force_for_sets():
    z, t = sampled(n=200, K=5, seed=1)
    Y = np.zeros(z.shape, bool)
    Y[np.arange(len(t)), t] = True
    np.testing.assert_array_equal(cal.nll_profile_set(z, Y), cal.nll_profile(z, t))
    Y[::3, 0] = True  # some rows get a second label
    prof = cal.nll_profile_set(z, Y)
    brute = [-np.log((softmax(z / np.exp(g)) * Y).sum(1)).sum() for g in cal.LOG_TAU_GRID]
    np.testing.assert_allclose(prof, brute, rtol=1e-10)
    Y[5] = False
    with pytest.raises(ValueError):  # a row without a label has no likelihood: the caller leaves it out
        cal.nll_profile_set(z, Y)


def test_profile_blocks_bound_memory_without_changing_the_result(monkeypatch):
    z, t = sampled(n=100, K=4, seed=2)
    whole = cal.nll_profile(z, t)
    monkeypatch.setattr(cal, "_PROFILE_BLOCK", 41 * 4 * 7)  # 7 rows per block
    np.testing.assert_allclose(cal.nll_profile(z, t), whole, rtol=1e-12)


def test_parabolic_argmin_is_exact_on_a_parabola_and_clamped_at_the_ends():
    x = cal.LOG_TAU_GRID
    assert cal._argmin_parabolic((x - 0.3) ** 2, x) == pytest.approx(0.3, abs=1e-12)
    assert cal._argmin_parabolic((x - 9.0) ** 2, x) == x[-1]
    assert cal._argmin_parabolic((x + 9.0) ** 2, x) == x[0]


def test_temperature_record_recovers_the_over_confidence_of_its_logits():
    z, t = sampled(n=4000, K=6, scale=1.5)
    Y = np.zeros(z.shape, bool)
    Y[np.arange(len(t)), t] = True
    rec = TemperatureRecord()
    assert rec.temperature(16.0) == 1.0 and rec.temperature(0.0) == 1.0  # empty: the model's own scores
    rec.observe(2.0 * z, Y)  # twice too confident
    assert rec.weight == len(z)
    assert rec.temperature(16.0) == pytest.approx(2.0, rel=0.08)
    # the prior holds a thin record near 1
    thin = TemperatureRecord()
    thin.observe(2.0 * z[:4], Y[:4])
    assert abs(np.log(thin.temperature(16.0))) < abs(np.log(rec.temperature(16.0)))
    # decay keeps the optimum (the prior's weight grows relatively) and scales the weight
    rec.decay(0.5)
    assert rec.weight == len(z) / 2 and rec.temperature(0.0) == pytest.approx(2.0, rel=0.08)
    one = TemperatureRecord()
    one.observe(z[:, :1], Y[:, :1])  # a single known class: nothing to calibrate
    assert one.weight == 0.0
    with pytest.raises(ValueError):
        TemperatureRecord(np.zeros(5))


def test_share_log_odds_is_the_log_odds_of_the_softmax_share_and_saturates_stably():
    z, _ = sampled(n=50, K=7, seed=3)
    p = softmax(z)
    np.testing.assert_allclose(cal.share_log_odds(z), np.log(p) - np.log1p(-p), atol=1e-9)
    u = cal.share_log_odds(np.array([[0.0, -2000.0], [1000.0, 0.0], [5.0, 5.0]]))
    assert np.all(np.isfinite(u))
    assert u[0, 0] > 600 and u[0, 1] < -1000 and u[1, 0] > 600 and u[2, 0] == 0.0
    assert np.all(np.isfinite(cal.share_log_odds(np.zeros((2, 1)))))  # one class: the whole share


def test_bins_and_pava():
    assert cal.bin_index(np.array([-100.0, -12.0, -11.5, 5.99, 6.0, 100.0])).tolist() == [0, 0, 0, 31, 31, 31]
    y, w = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.9]), np.array([1.0, 1.0, 3.0, 1.0, 1.0, 2.0])
    fit = cal.pava(y, w)
    assert np.all(np.diff(fit) >= 0)
    assert (fit * w).sum() == pytest.approx((y * w).sum())  # isotonic regression keeps the weighted mean
    assert fit.tolist() == pytest.approx([0.1, 0.225, 0.225, 0.45, 0.45, 0.9])
    np.testing.assert_array_equal(cal.pava(np.sort(y), w), np.sort(y))


def label_stream(n=20000, K=5, seed=0, shift=1.0):
    """Logits whose labels apply with probability sigmoid(u - shift): the share log-odds is informative but
    mis-scaled, and the truth of q is known."""
    rng = np.random.default_rng(seed)
    z = 2.0 * rng.normal(size=(n, K))
    u = cal.share_log_odds(z)
    Y = rng.random((n, K)) < 1.0 / (1.0 + np.exp(-(u - shift)))
    return z, Y, u


def test_label_record_learns_the_probability_of_each_bin():
    z, Y, u = label_stream()
    rec = LabelRecord(5)
    assert rec.empty
    rec.observe(z, Y, np.arange(5))
    assert not rec.empty and rec.pooled[0].sum() == z.size and rec.per_class[:, 0].sum() == z.size
    assert rec.pooled[1].sum() == Y.sum()
    h = rec.bin_probs()
    assert h.shape == (32,) and np.all(np.diff(h) >= 0) and h.min() >= 1e-4 and h.max() <= 1 - 1e-4
    well = rec.pooled[0] > 500  # bins with data: the map is the truth sigmoid(u - 1)
    np.testing.assert_allclose(h[well], 1 / (1 + np.exp(-(cal.U_CENTRES[well] - 1.0))), atol=0.04)
    rec.decay(0.25)
    np.testing.assert_allclose(rec.pooled[0].sum(), z.size / 4)
    rec.add_class()
    assert rec.per_class.shape == (6, 2, 32) and not rec.per_class[5].any()


def test_label_cuts_are_per_label_and_a_label_without_record_takes_the_pooled_cut():
    z, Y, _ = label_stream(K=4, seed=1)
    Y[:, 3] = False  # label 3 never applies: its cut goes up
    Y[:, 2] |= np.random.default_rng(2).random(len(Y)) < 0.5  # label 2 applies often: its cut goes down
    rec = LabelRecord(5)  # class 4: never scored
    rec.observe(z, Y, np.arange(4))
    cuts = rec.cuts()
    assert cuts.shape == (5,)
    assert cuts[2] < cuts[0] and cuts[2] < cuts[1] and cuts[3] > cuts[0]
    pooled = LabelRecord(1, rec.pooled, rec.pooled[None])
    assert cuts[4] == pooled.cuts()[0]  # a class never scored: exactly the pooled record's cut
    assert np.all(np.isin(cuts[np.isfinite(cuts)], cal.U_EDGES))


def test_a_class_with_few_positives_leans_on_the_pooled_cut_and_one_with_many_keeps_its_own():
    """The prior of a class's cut is counted in positive pairs (as many as the average class has): a rare class
    whose 2 positives happen to score low keeps about the pooled cut at its own rate instead of dropping to catch
    them (20 pooled pairs, the former prior, bring under one positive and let it drop), while a class with many
    positives that score lower than the others' still takes its own, lower cut."""
    K, neg, hi, mid, low = 4, 1000.0, 24, 20, 12  # bins: most classes' positives, class 1's, the rare one's
    h = np.zeros((K, 2, cal.U_BINS))
    h[:, 0, :low] = neg / low  # every class: 1,000 negatives spread over the low u
    h[:, 0, low : low + 4] = 5.0  # and a few further up, where the rare class's positives fall
    for k, (b, n) in enumerate(((hi, 60.0), (mid, 60.0), (low, 2.0), (hi, 60.0))):
        h[k, 0, b] += n
        h[k, 1, b] += n
    rec = LabelRecord(K, h.sum(0), h)
    cuts = rec.cuts()
    # the rare class: its own record alone would cut at the edge of bin 12 (F1 1/6 there, 0 above)
    alone = LabelRecord(1, h[2], h[2:3])
    assert alone.cuts()[0] == cal.U_EDGES[low]
    assert cuts[2] >= cal.U_EDGES[low + 4]  # with the prior it stays above the bins where its negatives lie
    for k in (0, 1, 3):  # classes with ample record keep all their positives and none of their negatives ...
        assert cal.U_EDGES[low + 4] <= cuts[k] <= cal.U_EDGES[mid if k == 1 else hi]
    assert cuts[1] <= cal.U_EDGES[mid] < cal.U_EDGES[hi]  # ... class 1 too, whose positives score lower
    # the rule, brute force: own histogram + the pooled one at the class's rate, bringing pooled positives / classes
    P_tot, P_pos = h.sum(0)
    for k in range(K):
        rate = (h[k, 1].sum() + 1.0) / (h[k, 0].sum() + 2.0)  # the class's base rate (Laplace)
        prior_pos = np.minimum(P_pos * rate / (P_pos.sum() / P_tot.sum()), P_tot)
        w = (P_pos.sum() / K) / (P_pos.sum() * rate / (P_pos.sum() / P_tot.sum()))  # prior positives: 182 / 4
        tot, pos = h[k, 0] + w * P_tot, h[k, 1] + w * prior_pos
        f1 = [2 * pos[j:].sum() / (tot[j:].sum() + pos.sum()) for j in range(cal.U_BINS)]
        j = int(np.argmax(f1))
        assert cuts[k] == (cal.U_EDGES[j] if j > 0 else -np.inf)


def test_label_lists_become_pairs():
    assert cal.label_sets(["a", ["b", "c", "b"], ("c",)]) == [("a",), ("b", "c"), ("c",)]
    for bad in ([[]], [None], [["a", 1]], [3], [{"a"}], [b"a"]):
        with pytest.raises(ValueError):
            cal.label_sets(bad)
    ptr = np.array([0, 1, 3, 4, 7])  # rows: [5], [6, 7], [8], [9, 10, 11]
    cls = np.array([5, 6, 7, 8, 9, 10, 11])
    local, c = cal.label_pairs(ptr, cls, np.array([3, 0, 1]))
    assert local.tolist() == [0, 0, 0, 1, 2, 2] and c.tolist() == [9, 10, 11, 5, 6, 7]
    local, c = cal.label_pairs(np.arange(5), np.array([4, 3, 2, 1]), np.array([2, 0]))
    assert local.tolist() == [0, 1] and c.tolist() == [2, 4]


def test_interpolation_on_the_uniform_grid_and_its_inverse():
    rng = np.random.default_rng(4)
    h = np.clip(np.sort(rng.random(32)), 1e-4, 1 - 1e-4)
    h[10:14] = h[10]  # flat stretches, as pooled violators leave them
    u = np.concatenate([rng.uniform(-20, 10, 5000), cal.U_CENTRES, cal.U_EDGES, [-np.inf, np.inf, 700.0]])
    np.testing.assert_allclose(cal.interp_bins(u, h), np.interp(u, cal.U_CENTRES, h), rtol=0, atol=1e-14)
    for q in (0.05, 0.3, h[10], 0.5, 0.97, h[0], h[-1]):
        cut = cal.inverse_bins(h, q)
        grid = np.linspace(-15.0, 9.0, 20001)
        reach = cal.interp_bins(grid, h) >= q - 1e-12
        assert cut == -np.inf if reach.all() else abs(cut - grid[reach.argmax()]) < 2e-3
    assert cal.inverse_bins(h, h[0] / 2) == -np.inf and cal.inverse_bins(h, (1 + h[-1]) / 2) == np.inf
    z = 3.0 * rng.normal(size=(400, 6))
    u = cal.share_log_odds(z)
    p = softmax(z)
    for c in (-12.0, -1.3, 0.0, 2.5, 6.0):  # a cut on u is the cut sigmoid(u) on the share
        np.testing.assert_array_equal(u >= c, p >= cal.share_cut(np.array(c)))
    assert cal.share_cut(np.array([-np.inf, 0.0])).tolist() == [0.0, 0.5]
