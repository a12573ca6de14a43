"""The compiled form of a few-shot classifier: what :meth:`classifiers.fewshot.learner.FewShotLearner.compile`
returns for serving. numpy only."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LinearPredictor"]


@dataclass(frozen=True)
class LinearPredictor:
    """A compiled, read-only classifier: ``softmax(X @ W + b)``. What :meth:`FewShotLearner.compile` returns
    for serving: no statistics, D x K + K floats (49 KB at D=384, 16 classes), identical scores.

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
    W: np.ndarray  # (D, K), already divided by the temperature
    b: np.ndarray  # (K,)
    oos_mean: np.ndarray | None = None  # (K,) in-scope mean of class k's logit over inputs of class k
    oos_std: np.ndarray | None = None  # (K,) its standard deviation
    zs_classes: np.ndarray | None = None  # (m,) int: columns of classes without examples (label prior only)
    zs_L: np.ndarray | None = None  # (D, m) their unit label vectors

    @property
    def nbytes(self) -> int:
        extra = sum(a.nbytes for a in (self.oos_mean, self.oos_std, self.zs_classes, self.zs_L) if a is not None)
        return int(self.W.nbytes + self.b.nbytes + extra)

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
        return _softmax(self.decision_function(X))

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
