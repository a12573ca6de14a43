"""Learning from the inputs a classifier answers, without labels (issue 29): the zero-shot part of a classifier with
declared labels moves toward the inputs its labels attract.

**Statistics** (per class, bounded whatever the traffic; no input is kept): ``n[k]``, the soft count of the inputs
the *anchor* gave to class k, and ``s[k]``, their soft sum. The anchor is the classifier's zero-shot posterior on
its label vectors, ``r_k(x) = softmax(sharpness * score_scale * x . l_k)`` — never the adapted model itself, so
the learner cannot reinforce its own mistakes, and the statistics are plain sums: the same inputs in any order or
chunking give the same statistics (up to float rounding) until a class reaches ``class_cap`` soft inputs, after
which its count and sum are scaled back to the cap (older inputs fade, so a class follows drifting traffic and no
input weighs more than 1 / cap of it).

**Model** (the zero-shot logits it replaces are ``score_scale * x . l_k``): each class gets a prototype between its
label vector and the mean of its inputs, ``p_k = (1 - lam_k) l_k + lam_k m_k`` with ``m_k = s_k / n_k`` and
``lam_k = min(n_k / (n_k + pseudo_count), max_share)``, and the logits are
``score_scale * t * (x . p_k + bias * (1 - |p_k|^2) / 2)``: ``bias = 1`` would be the Euclidean distance to the
prototype, ``0`` the plain dot product. ``t = 1 + (gain - 1) * mean_k(lam_k)`` is the scale of the adapted
scores: the model's own scores are under-confident once the prototypes leave the label vectors (measured on
CLINC150 *train* streams, docs/eval/unlabeled.md), and it is 1 where nothing was learned. Without any statistics,
or before the minimum evidence (below), the logits are exactly the zero-shot logits.

The guards the measurements asked for (CLINC150 *train* streams, e5 / MiniLM; the constants are the ``unlabeled_*``
fields of :class:`LearnerConfig`, bench/eval_unlabeled.py ``--ablations``): minimum evidence, no prototype moves
before the classifier has learned ``min_per_class`` inputs per declared class on average (without it the first few
hundred inputs of a 150-way stream moved the prototypes onto one or two inputs each: cumulative accuracy down to
0.018 below zero-shot); ``lam_k`` grows with the class's own evidence, so a class the traffic rarely brings keeps
most of its label vector (one share for all classes moved the classes absent from the traffic onto their
neighbours' inputs: +0.003 / -0.008 instead of +0.038 / +0.033 on a stream of a fifth of the 150 intents);
``max_share`` keeps ``1 - max_share`` of the label vector in every prototype (drift limit); ``class_cap`` bounds a
class's evidence; and :func:`anchored` checks that the adapted classifier still gives every labelled class mean the
class the classifier without adaptation gives it (a labelled example outweighs any number of unlabelled inputs
there).

Everything is numpy; the statistics cost ``8 + 8 D`` bytes per class in the state (3,080 at D = 384).
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from classifiers.fewshot.learner_config import LearnerConfig

__all__ = ["UnlabeledRecord", "anchored", "CLASS_BYTES_PER_DIM", "MAX_HALVINGS"]

CLASS_BYTES_PER_DIM = 8  # s[k] is float64; n[k] adds 8 bytes per class
MAX_HALVINGS = 4  # the anchor check halves the adaptation at most this many times, then switches it off


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class UnlabeledRecord:
    """The unlabelled statistics of one classifier (class-aligned rows, like the learner's)."""

    def __init__(self, classes: int, dim: int, n: np.ndarray | None = None, s: np.ndarray | None = None,
                 learned: int = 0):
        self.n = np.zeros(classes) if n is None else np.asarray(n, np.float64).reshape(classes).copy()
        self.s = np.zeros((classes, dim)) if s is None else np.asarray(s, np.float64).reshape(classes, dim).copy()
        self.learned = int(learned)

    @property
    def empty(self) -> bool:
        return not bool((self.n > 0).any())

    def add_class(self) -> None:
        self.n = np.append(self.n, 0.0)
        self.s = np.vstack([self.s, np.zeros((1, self.s.shape[1]))])

    def observe(self, X: np.ndarray, L: np.ndarray, scale: float, sharpness: float, class_cap: float) -> None:
        """Fold a chunk ``X`` (n, D) into the statistics with the anchor's posterior on the label vectors ``L``."""
        R = _softmax((sharpness * scale) * (X @ L.T))
        self.n += R.sum(0)
        self.s += R.T @ X
        over = self.n > class_cap
        if over.any():
            f = class_cap / self.n[over]
            self.n[over] *= f
            self.s[over] *= f[:, None]
        self.learned += len(X)

    def shares(self, cfg: LearnerConfig) -> np.ndarray:
        """(K,) lam_k: how far each prototype has moved from its label vector toward its inputs' mean; all 0 until
        the classifier has seen ``cfg.unlabeled_min_per_class`` inputs per class on average (minimum evidence)."""
        n = self.n
        if n.sum() < cfg.unlabeled_min_per_class * len(n):
            return np.zeros_like(n)
        lam = np.divide(n, n + cfg.unlabeled_pseudo_count, out=np.zeros_like(n), where=n > 0)
        return np.minimum(lam, cfg.unlabeled_max_share)

    def zero_shot(self, L: np.ndarray, scale: float, cfg: LearnerConfig,
                  shrink: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """The adapted zero-shot logits' weights ``A`` (D, K) and biases ``b`` (K,): ``x @ A + b``; with
        ``shrink`` in [0, 1] every share scaled down (0: the zero-shot logits, exactly)."""
        lam = self.shares(cfg) * shrink
        if not (lam > 0).any():
            return scale * L.T, np.zeros(len(L))
        mean = np.divide(self.s, self.n[:, None], out=np.zeros_like(self.s), where=(self.n > 0)[:, None])
        P = (1.0 - lam)[:, None] * L + lam[:, None] * mean
        t = scale * (1.0 + (cfg.unlabeled_scale_gain - 1.0) * float(lam.mean()))
        b = t * cfg.unlabeled_bias * 0.5 * (1.0 - np.einsum("kd,kd->k", P, P))
        return t * P.T, b


def anchored(blend: Callable[[float], tuple[np.ndarray, np.ndarray]], anchors: np.ndarray,
             own: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The agreement-with-anchors check. ``blend(shrink)`` gives the classifier's (A, b) with the adaptation scaled
    by ``shrink`` (0: none); ``anchors`` (m, D) are the labelled class means, ``own`` (m,) their classes. Returns the
    weights with the largest shrink in 1, 1/2, ... 1/2^MAX_HALVINGS (else 0) under which every anchor the
    unadapted classifier puts in its own class stays there, and that shrink."""
    A0, b0 = blend(0.0)
    keep = (anchors @ A0 + b0).argmax(1) == own
    shrink = 1.0
    for _ in range(MAX_HALVINGS + 1):
        A, b = blend(shrink)
        if not keep.any() or np.all(((anchors[keep] @ A + b).argmax(1)) == own[keep]):
            return A, b, shrink
        shrink *= 0.5
    return A0, b0, 0.0
