"""Calibrated scores and multi-label answers of a few-shot classifier, fitted from its own training stream.

Both records are *prequential* (test-then-train): :meth:`FewShotLearner.update` scores each chunk of a batch with
the current model before it learns the chunk, and the scores of those honest out-of-sample predictions go into
bounded running sums. No example is kept, and the records never change the learner's statistics, hence never
its argmax. docs/fewshot.md ("Calibrated scores and multi-label") states the method; the design and its
measurements are issue 28's calibration study.

* :class:`TemperatureRecord` (single-label): the exact NLL of ``softmax(z / tau)`` over a fixed grid of 41
  temperatures (``LOG_TAU_GRID``), summed over scored rows. ``compile()`` serves ``softmax(z / tau*)`` with
  ``tau*`` = the profile's minimum under a Gaussian prior on ``ln tau`` centred on 1 (the learner's own
  scores): one positive scalar per classifier, so the order of the labels never changes. The fixed
  temperature 10 of the model was tuned on CLINC; off CLINC the NLL-optimal temperature drifts with the
  stream (on GoEmotions it falls about 20x) and a fixed one is badly over-confident.
* :class:`LabelRecord` (multi-label): histograms, over 32 bins of the share log-odds
  ``u_k = log p_k - log(1 - p_k)`` of the temperature-calibrated softmax p, of how many (input, label) pairs
  were scored and how many of them applied; pooled, and per class. The pooled one gives each label's own
  probability ``q = h(u)`` (an isotonic map); each class's own, with the pooled one as a prior, its decision cut on u.

It also turns multi-label training examples (a list of labels per input) into the (input, label) pairs the
learner's statistics take (:func:`label_sets`, :func:`label_pairs`). numpy only.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = [
    "LABEL_CLASS_BYTES", "LOG_TAU_GRID", "MAX_SCORED_ROWS", "RECORD_BYTES", "U_BINS", "U_CENTRES", "U_EDGES",
    "LabelRecord", "TemperatureRecord", "bin_index", "interp_bins", "inverse_bins", "label_pairs", "label_sets",
    "nll_profile", "nll_profile_set", "pava", "share_cut", "share_log_odds",
]

LOG_TAU_GRID = np.log(2.0) * np.arange(-2.0, 3.0 + 1e-9, 0.125)  # ln tau: tau from 1/4 to 8 in 41 steps of 2^(1/8)
PRIOR_CURVATURE = 0.5  # the prior on ln tau is prior_count * 0.5 * (ln tau)^2: prior_count unit-variance pseudo-rows
U_EDGES = np.linspace(-12.0, 6.0, 33)  # bins of u, clamped at both ends (u > 6: p > 0.9975; u < -12: p < 6e-6)
U_BINS = len(U_EDGES) - 1
U_CENTRES = 0.5 * (U_EDGES[:-1] + U_EDGES[1:])
LABEL_PRIOR_PAIRS = 2.0  # Beta prior per bin: this many pairs at sigmoid(bin centre), the uncalibrated share
MAX_SCORED_ROWS = 512  # rows of one chunk that enter the records: bounds the cost (n K 41 exps) of a large update
_PROFILE_BLOCK = 1 << 21  # elements of one (grid, rows, classes) block of the profile: ~16 MB per temporary
RECORD_BYTES = 8 * (len(LOG_TAU_GRID) + 2 * U_BINS)  # the records' arrays that do not grow with the classes
LABEL_CLASS_BYTES = 8 * 2 * U_BINS  # a class's label histograms: 512 bytes


# ---------------------------------------------------------------------------------------- multi-label examples
def label_sets(y: Sequence[str | Sequence[str]]) -> list[tuple[str, ...]]:
    """Each item of ``y`` as the tuple of its labels: a string is one label, a list or tuple of strings all the
    labels that apply (non-empty; duplicates collapse, first occurrence first)."""
    out: list[tuple[str, ...]] = []
    for item in y:
        if isinstance(item, str):
            out.append((item,))
        elif isinstance(item, (list, tuple)) and item and all(isinstance(lab, str) for lab in item):
            out.append(tuple(dict.fromkeys(item)))
        else:
            raise ValueError(f"a label must be a string or a non-empty list of strings, got {item!r:.80}")
    return out


def label_pairs(ptr: np.ndarray, cls: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The (input, label) pairs of ``rows``: (position in ``rows`` of each pair's input, its class), in the order
    of ``rows``. Row i's classes are ``cls[ptr[i]:ptr[i + 1]]``."""
    cnt = ptr[rows + 1] - ptr[rows]
    if (cnt == 1).all():  # single-label rows: exactly the arrays of a single-label update
        return np.arange(len(rows)), cls[ptr[rows]]
    first = np.cumsum(cnt) - cnt
    local = np.repeat(np.arange(len(rows)), cnt)
    return local, cls[np.repeat(ptr[rows] - first, cnt) + np.arange(int(cnt.sum()))]


# ---------------------------------------------------------------------------------------- temperature record


def _logsumexp(z: np.ndarray) -> np.ndarray:
    """logsumexp over the last axis."""
    m = z.max(-1, keepdims=True)
    return (m + np.log(np.exp(z - m).sum(-1, keepdims=True)))[..., 0]


def _block_rows(K: int) -> int:
    """Rows per block of a profile, so that one (grid, rows, K) temporary stays under ``_PROFILE_BLOCK`` elements."""
    return max(1, _PROFILE_BLOCK // (len(LOG_TAU_GRID) * max(K, 1)))


def _logsumexp_profile(z: np.ndarray) -> np.ndarray:
    """(G,) ``sum_i logsumexp_k(z_ik / tau_g)`` for every grid temperature at once (rows in blocks, so memory
    stays bounded for any n and K): the normalising part of the NLL profile, n K 41 exps."""
    inv = np.exp(-LOG_TAU_GRID)[:, None, None]
    out = np.zeros(len(LOG_TAU_GRID))
    step = _block_rows(z.shape[1])
    for s in range(0, len(z), step):
        out += _logsumexp(z[None, s : s + step] * inv).sum(1)
    return out


def nll_profile(z: np.ndarray, t: np.ndarray) -> np.ndarray:
    """(G,) summed NLL ``-log softmax(z_i / tau_g)[t_i]`` of logits ``z`` (n, K) at true columns ``t`` (n,), for
    every temperature of the grid."""
    inv = np.exp(-LOG_TAU_GRID)
    return _logsumexp_profile(z) - np.outer(inv, z[np.arange(len(z)), t]).sum(1)


def nll_profile_set(z: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """(G,) summed ``-log sum_{k: Y_ik} softmax(z_i / tau_g)_k``: the profile for rows with label *sets*
    (``Y`` (n, K) bool, at least one True per row): the probability the single-label answer gives to "one of this
    input's labels". With one label per row it equals :func:`nll_profile` exactly, so one record serves
    classifiers trained with strings, lists, or both. The sets' part costs O(pairs x 41), not O(n K 41)."""
    rows, cols = np.nonzero(Y)  # row-major: each row's labels are consecutive
    starts = np.flatnonzero(np.diff(rows, prepend=-1))
    if len(starts) != len(z):
        raise ValueError("every row needs at least one label")
    inv = np.exp(-LOG_TAU_GRID)
    own = np.logaddexp.reduceat(np.outer(inv, z[rows, cols]), starts, axis=1)  # (G, n): log-sum over each set
    return _logsumexp_profile(z) - own.sum(1)


def _argmin_parabolic(f: np.ndarray, x: np.ndarray) -> float:
    """Minimiser of a sampled convex curve: the best grid point, refined by the parabola through its two
    neighbours (the grid's end points are returned as they are: the optimum lies beyond the grid)."""
    j = int(np.argmin(f))
    if j == 0 or j == len(f) - 1:
        return float(x[j])
    y0, y1, y2 = f[j - 1], f[j], f[j + 1]
    den = y0 - 2 * y1 + y2
    h = x[j + 1] - x[j]
    return float(x[j] + (0.5 * h * (y0 - y2) / den if den > 0 else 0.0))


class TemperatureRecord:
    """The recency-weighted sum of out-of-sample NLL profiles (``profile``, (41,)) and of the rows behind them
    (``weight``): 42 floats whatever the stream. An empty record serves tau = 1 (the model's own scores)."""

    def __init__(self, profile: np.ndarray | None = None, weight: float = 0.0):
        self.profile = np.zeros(len(LOG_TAU_GRID)) if profile is None else np.asarray(profile, np.float64).copy()
        if self.profile.shape != LOG_TAU_GRID.shape:
            raise ValueError(f"a temperature profile has {len(LOG_TAU_GRID)} points, got {self.profile.shape}")
        self.weight = float(weight)

    def observe(self, z: np.ndarray, Y: np.ndarray) -> None:
        """Add scored rows: logits ``z`` (n, K) over the classes the model knew, before it learned the rows;
        ``Y`` (n, K) bool, each row's labels among them (rows without one must be left out by the caller)."""
        if len(z) == 0 or z.shape[1] < 2:  # a single known class has no choice to calibrate
            return
        self.profile += nll_profile_set(z, Y)
        self.weight += len(z)

    def decay(self, factor: float) -> None:
        self.profile *= factor
        self.weight *= factor

    def log_temperature(self, prior_count: float) -> float:
        """ln tau* = the argmin of ``profile + prior_count * 0.5 * (ln tau)^2`` (parabolic refinement between grid
        points); 0 for an empty record. The prior keeps a young classifier, whose handful of scored rows say
        little, near tau = 1, and is outweighed as the record grows."""
        if self.weight <= 0:
            return 0.0
        f = self.profile + prior_count * PRIOR_CURVATURE * LOG_TAU_GRID**2
        return _argmin_parabolic(f, LOG_TAU_GRID)

    def temperature(self, prior_count: float) -> float:
        return float(np.exp(self.log_temperature(prior_count)))


# ---------------------------------------------------------------------------------------- label record
def share_log_odds(z: np.ndarray) -> np.ndarray:
    """(n, K) ``u_k = log p_k - log(1 - p_k)`` with ``p = softmax(z)``, i.e. ``z_k - logsumexp_{j != k} z_j``:
    a label's share of the single-label answer, on a scale where it is normalised against the whole label set.
    One pass of exps and one of logs on the (n, K) matrix, two temporaries; saturates at about +-690 (beyond
    every bin)."""
    u = np.asarray(z, np.float64) - np.max(z, axis=1, keepdims=True)
    rest = np.exp(u)
    np.subtract(rest.sum(1, keepdims=True), rest, out=rest)  # sum of the others' exps
    np.maximum(rest, 1e-300, out=rest)
    u -= np.log(rest, out=rest)
    return u


def interp_bins(u: np.ndarray, h: np.ndarray) -> np.ndarray:
    """``np.interp(u, U_CENTRES, h)`` (clamped at the end centres), computed on the uniform grid of the centres:
    a few arithmetic passes and two gathers instead of a binary search per element (4x faster at 32 x 256)."""
    pos = np.subtract(u, U_CENTRES[0])
    pos *= 1.0 / (U_CENTRES[1] - U_CENTRES[0])
    np.clip(pos, 0.0, U_BINS - 1, out=pos)
    j = np.minimum(pos.astype(np.intp), U_BINS - 2)
    pos -= j
    pos *= np.diff(h)[j]
    pos += h[j]
    return pos


def inverse_bins(h: np.ndarray, q: float) -> float:
    """The least u with ``interp_bins(u, h) >= q``, for a non-decreasing ``h``: -inf when every u reaches q, +inf
    when none does. ``q_k >= q`` is then ``u_k >=`` it, i.e. ``p_k >= sigmoid(it)`` on the softmax itself."""
    j = int(np.searchsorted(h, q, side="left"))  # the first centre whose probability reaches q
    if j == 0:
        return -math.inf
    if j == len(h):
        return math.inf
    c0, c1 = U_CENTRES[j - 1], U_CENTRES[j]
    return float(c0 + (q - h[j - 1]) / (h[j] - h[j - 1]) * (c1 - c0))


def share_cut(u_cut: np.ndarray) -> np.ndarray:
    """``sigmoid(u_cut)``: the cut on the softmax share p equivalent to ``u_cut`` on its log-odds u (u is
    increasing in p); -inf gives 0 (always). Cuts are finite or -inf (a cut of +inf, never, is the caller's)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(u_cut, np.float64)))


def bin_index(u: np.ndarray) -> np.ndarray:
    """Bin of each u among ``U_EDGES``' 32 bins; values beyond the ends fall in the end bins."""
    return np.clip(np.searchsorted(U_EDGES, u, side="right") - 1, 0, U_BINS - 1)


def pava(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted isotonic (non-decreasing) regression of ``y`` by pooling adjacent violators; ``y`` has 32 bins,
    so the plain stack walk is the cheapest form."""
    vals: list[float] = []
    wts: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        vals.append(yi)
        wts.append(wi)
        sizes.append(1)
        while len(vals) > 1 and vals[-2] > vals[-1]:
            v2, w2, s2 = vals.pop(), wts.pop(), sizes.pop()
            tw = wts[-1] + w2
            vals[-1] = (vals[-1] * wts[-1] + v2 * w2) / tw if tw > 0 else (vals[-1] + v2) / 2
            wts[-1] = tw
            sizes[-1] += s2
    return np.repeat(vals, sizes)


class LabelRecord:
    """Histograms of scored (input, label) pairs over the 32 bins of u: ``pooled`` (2, 32) = [pairs, pairs where
    the label applied] over all classes, ``per_class`` (K, 2, 32) the same per class (class-aligned with the
    learner's rows: 512 bytes per class). Empty: no calibrated label probabilities and no cuts."""

    def __init__(self, classes: int, pooled: np.ndarray | None = None, per_class: np.ndarray | None = None):
        shape = (int(classes), 2, U_BINS)
        self.pooled = np.zeros((2, U_BINS)) if pooled is None else np.asarray(pooled, np.float64).reshape(2, U_BINS)
        self.per_class = np.zeros(shape) if per_class is None else np.asarray(per_class, np.float64).reshape(shape)
        self.pooled = self.pooled.copy()
        self.per_class = self.per_class.copy()

    @property
    def empty(self) -> bool:
        return not self.pooled[0].sum() > 0

    def add_class(self) -> None:
        self.per_class = np.concatenate([self.per_class, np.zeros((1, 2, U_BINS))])

    def observe(self, z: np.ndarray, Y: np.ndarray, cols: np.ndarray) -> None:
        """Add scored rows: temperature-calibrated logits ``z`` (n, k) over the classes ``cols`` the model knew
        before it learned the rows, ``Y`` (n, k) bool: which of them apply to each row (a row may have none: an
        input of a class not yet known is a negative for every known one, as it will be in traffic)."""
        k = len(cols)
        if len(z) == 0 or k < 2:
            return
        flat = (bin_index(share_log_odds(z)) + U_BINS * np.arange(k)[None, :]).ravel()
        tot = np.bincount(flat, minlength=U_BINS * k).reshape(k, U_BINS)
        pos = np.bincount(flat, weights=Y.ravel().astype(np.float64), minlength=U_BINS * k).reshape(k, U_BINS)
        self.pooled += (tot.sum(0), pos.sum(0))
        self.per_class[cols, 0] += tot
        self.per_class[cols, 1] += pos

    def decay(self, factor: float) -> None:
        self.pooled *= factor
        self.per_class *= factor

    def bin_probs(self) -> np.ndarray:
        """(32,) each bin's probability that a label applies: the isotonic fit of ``(pos + a s) / (tot + a)``, a
        Beta prior of ``a = 2`` pairs at ``s = sigmoid(bin centre)`` (u is a log-odds, so the uncalibrated share is
        the natural prior where the record is thin), clipped to [1e-4, 1 - 1e-4]."""
        tot, pos = self.pooled
        a = LABEL_PRIOR_PAIRS
        f = (pos + a / (1.0 + np.exp(-U_CENTRES))) / (tot + a)
        return np.clip(pava(f, tot + a), 1e-4, 1.0 - 1e-4)

    def cuts(self) -> np.ndarray:
        """(K,) each class's decision cut on u (a label applies when ``u_k >= cut_k``): the bin edge that maximises
        F1 on the class's own histogram plus a prior, the pooled histogram rescaled to the class's base rate and
        weighted to bring as many positive pairs as the average scored class has (pooled positives / classes
        scored; in pairs, ``1 / (classes x rate_k / pooled rate)`` of the pooled record). A class with fewer
        positives than average leans on the pooled shape at its own rate, one with more on its own histogram.

        Why positives: the F1-optimal cut is set by where the class's positives fall, and a cut fitted on a handful
        of them is noisy and biased low (a low cut that happens to catch them all wins on the record, and predicts
        far too many labels on new inputs). A prior counted in pairs (formerly 20 pairs) brings ``20 x rate``
        positives, under one for most classes, i.e. no shrinkage where it is needed. Chosen on issue 28's inner
        validation (GoEmotions training stream split 70/30, 5 splits x 3 streams, both models; the test part
        untouched): macro-F1 / the LR bound at ~1,000 examples 0.923 -> 0.994 (MiniLM), 0.985 -> 1.046 (e5); with
        all 2,279 0.991 -> 1.035, 1.051 -> 1.079. Fixed prior strengths of 30 to 300 positives did as well; this
        one has no constant and follows the stream. A class never scored as a known class takes the pooled cut;
        ``-inf`` means "every input" (the best F1 predicts all bins)."""
        Ptot, Ppos = self.pooled
        lt, lp = self.per_class[:, 0], self.per_class[:, 1]
        seen = lt.sum(1) > 0
        prate = Ppos.sum() / max(Ptot.sum(), 1e-12)
        rate = ((lp.sum(1) + 1.0) / (lt.sum(1) + 2.0)) / max(prate, 1e-12)  # class base rate / pooled rate
        w = 1.0 / (max(int(seen.sum()), 1) * rate)  # prior positives: w x rate x Ppos.sum() = Ppos.sum() / classes
        tot = lt + w[:, None] * Ptot
        pos = lp + w[:, None] * np.minimum(Ppos * rate[:, None], Ptot)
        tot[~seen], pos[~seen] = Ptot, Ppos
        tp = np.cumsum(pos[:, ::-1], 1)[:, ::-1]  # positives among the bins >= j: predicted there and right
        pred = np.cumsum(tot[:, ::-1], 1)[:, ::-1]
        P = pos.sum(1, keepdims=True)
        f1 = np.where(pred + P > 0, 2.0 * tp / np.maximum(pred + P, 1e-12), 0.0)
        j = np.where(P[:, 0] > 0, f1.argmax(1), U_BINS - 1)
        return np.where(j > 0, U_EDGES[j], -np.inf)
