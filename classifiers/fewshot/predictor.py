"""The compiled form of a few-shot classifier: what :meth:`classifiers.fewshot.learner.FewShotLearner.compile`
returns for serving. numpy only."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from classifiers.fewshot.calibration import interp_bins, inverse_bins, share_cut, share_log_odds

__all__ = ["LinearPredictor"]


@dataclass(frozen=True)
class LinearPredictor:
    """A compiled, read-only classifier: ``softmax(X @ W + b)``. What :meth:`FewShotLearner.compile` returns
    for serving: no statistics, D x K + K floats (49 KB at D=384, 16 classes). ``W`` and ``b`` are the learner's
    divided by the classifier's calibration temperature, so :meth:`predict_proba` is the calibrated single-label
    probability at no extra cost (the learner's own argmax, scores rescaled by one positive scalar).

    Multi-label (docs/fewshot.md, "Calibrated scores and multi-label"): with ``u_k = log p_k - log(1 - p_k)`` the
    log-odds of label k's share of the single-label answer, ``label_map`` (32 floats: the probability that a label
    applies at each bin centre of u, isotonic) gives each label's own probability ``q_k`` (:meth:`label_probs`),
    and ``label_cuts`` (K floats) each label's learned decision cut on u (:meth:`multi_label`). Both come from the
    learner's label record and are None while it is empty (a classifier trained before they existed, or with
    ``oos_record=False``).

    ``oos_mean`` / ``oos_std`` (K floats each, optional) calibrate the out-of-scope score: the in-scope
    distribution of each class's own logit, derived from the learner's statistics and corrected by its
    prequential record (see :meth:`FewShotLearner.compile`). They are None for a classifier without examples
    (declared labels only): there is nothing to calibrate on, and the caller uses the zero-shot rule
    (``classifiers.zeroshot.oos``).

    ``zs_classes`` / ``zs_L`` (optional): the columns of declared classes that have no example yet and their
    label vectors (D x m, float32). Such a class's logit mean is only its label-name prior, so the Gaussian
    calibration flags nearly all of its inputs; when it wins, :meth:`oos_score` uses the zero-shot rule on its
    label cosine instead (given the model's zero-shot calibration). Only these m columns are kept: none once
    every class has examples.
    """

    labels: tuple[str, ...]
    W: np.ndarray  # (D, K), already divided by the temperature and the calibration temperature
    b: np.ndarray  # (K,)
    oos_mean: np.ndarray | None = None  # (K,) in-scope mean of class k's logit over inputs of class k
    oos_std: np.ndarray | None = None  # (K,) its standard deviation
    zs_classes: np.ndarray | None = None  # (m,) int: columns of classes without examples (label prior only)
    zs_L: np.ndarray | None = None  # (D, m) their unit label vectors
    label_map: np.ndarray | None = None  # (32,) P(label applies) at the bin centres of u, non-decreasing
    label_cuts: np.ndarray | None = None  # (K,) per-label cuts on u (-inf: always)

    @property
    def nbytes(self) -> int:
        parts = (self.oos_mean, self.oos_std, self.zs_classes, self.zs_L, self.label_map, self.label_cuts)
        return int(self.W.nbytes + self.b.nbytes + sum(a.nbytes for a in parts if a is not None))

    @property
    def oos_calibrated(self) -> bool:
        """Whether :meth:`oos_score` is available (the classifier has seen examples)."""
        return self.oos_mean is not None and self.oos_std is not None

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.W.shape[0]:
            raise ValueError(f"X must have shape (n, {self.W.shape[0]}), got {X.shape}")
        return X @ self.W + self.b

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, K) calibrated single-label probabilities: each row sums to 1."""
        return _softmax(self.decision_function(X))

    def label_probs(self, logits: np.ndarray) -> np.ndarray:
        """(n, K) each label's own probability of applying, from the logits of :meth:`decision_function`:
        ``q = interp(u, bin centres, label_map)``, piecewise linear and non-decreasing in u (the rows need not sum
        to 1). Without a label record (``label_map`` None) q is the share itself, ``softmax(logits)``: the
        zero-shot rule. A few vectorised passes over the (n, K) matrix."""
        z = np.asarray(logits, np.float64)
        if self.label_map is None:
            return _softmax(z)
        return interp_bins(share_log_odds(z), self.label_map)

    def multi_label(self, logits: np.ndarray, threshold: float | None) -> np.ndarray | None:
        """(n, K) bool: which labels apply to each input (possibly none).

        * ``threshold`` given (in (0, 1)): ``label_probs(logits) >= threshold``, the caller's own operating point;
        * else the learned per-label cuts: ``u_k >= label_cuts[k]`` (each label's F1-optimal cut on its own
          record, shrunk toward the pooled one);
        * else (no label record: ``label_cuts`` None) **None**: nothing was learned, and the caller applies the
          model's zero-shot default rule (the share against the model's default threshold) itself.

        Both decisions are monotone in u, the log-odds of the share p, so they are taken on p itself against the
        equivalent cut ``sigmoid(u_cut)`` (``inverse_bins`` turns a threshold on q into its u_cut): one softmax
        and one comparison, what :meth:`predict_proba` costs (equal to the rule on q or u up to rounding at the
        cut).
        """
        if threshold is not None:
            if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
                raise ValueError(f"threshold must be in (0, 1), got {threshold}")
            cut: float | np.ndarray = threshold  # no label record: q is the share itself
            if self.label_map is not None:
                u_cut = inverse_bins(self.label_map, threshold)
                if u_cut == math.inf:  # no bin reaches the threshold: no label applies
                    return np.zeros(np.shape(logits), bool)
                cut = 1.0 / (1.0 + math.exp(-u_cut))
        elif self.label_cuts is None:
            return None
        else:
            cut = share_cut(self.label_cuts)  # (K,)
        return _softmax(np.asarray(logits, np.float64)) >= cut

    def oos_score(self, X: np.ndarray, *, logits: np.ndarray | None = None,
                  zero_shot: tuple[float, float] | None = None) -> np.ndarray:
        """(n,) out-of-scope score: how many in-scope standard deviations the winning class's logit falls
        short of its in-scope mean, ``(oos_mean[k] - z_k(x)) / oos_std[k]`` with ``k = argmax z(x)``. About
        N(0, 1) or lower for in-scope inputs (``classifiers.zeroshot.oos.threshold(rate)`` turns a target false-alarm
        rate into a threshold); large for inputs far from every class. O(n K) on top of the logits (pass
        ``logits`` to reuse them).

        ``zero_shot = (cos_mean, cos_std)`` (the model's zero-shot calibration, ``classifiers.zeroshot.oos``): where the
        winner is a declared class without examples, the score is ``(cos_mean - cos(x, l_k)) / cos_std`` on
        its label vector instead — the rule a zero-shot request uses, so such a class is judged like zero-shot
        until its first example arrives. Without it those rows keep the Gaussian score."""
        mean, std = self.oos_mean, self.oos_std
        if mean is None or std is None:  # not oos_calibrated
            raise ValueError("this predictor has no out-of-scope calibration (no examples yet)")
        z = self.decision_function(X) if logits is None else np.asarray(logits, np.float64)
        k = z.argmax(1)
        s = (mean[k] - z[np.arange(len(k)), k]) / std[k]
        if zero_shot is not None and self.zs_classes is not None and self.zs_L is not None and len(self.zs_classes):
            col = np.full(z.shape[1], -1)
            col[self.zs_classes] = np.arange(len(self.zs_classes))
            rows = np.flatnonzero(col[k] >= 0)
            if len(rows):
                Xr = np.asarray(X, np.float64)[rows]
                cos = np.einsum("nd,dn->n", Xr, self.zs_L[:, col[k[rows]]].astype(np.float64))
                s[rows] = (float(zero_shot[0]) - cos) / float(zero_shot[1])
        return s


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
