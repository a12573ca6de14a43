"""Out-of-scope ("none of these") scoring and abstain decisions, pure numpy.

Two scores, both "larger = more out of scope", both standardised so that a target false-alarm rate (the share
of in-scope inputs wrongly flagged) maps to one threshold through the normal quantile (:func:`threshold`):

* **few-shot** (a classifier with examples): :meth:`classifiers.fewshot.predictor.LinearPredictor.oos_score` — how many
  in-scope standard deviations the winning class's logit falls short of its in-scope mean; the mean and
  deviation per class come from the learner's own sufficient statistics (compile time, 2K floats), corrected
  by the learner's prequential record (the same score for training inputs scored before they were learned:
  3 running moments). A winning declared class without examples is scored by the zero-shot rule below. The
  winning logit is the learner's LDA discriminant ``mu_k^T Sigma^-1 x - mu_k^T Sigma^-1 mu_k / 2``, i.e. minus
  half the Mahalanobis distance to the nearest class up to the per-input term ``x^T Sigma^-1 x``, so it needs
  no D x D matrix at serving time; on CLINC it separates out-of-scope inputs as well as the full Mahalanobis
  distance and far better than the maximum softmax probability (docs/eval/report.md, OOS section).
* **zero-shot** (no statistics): :func:`zero_shot_oos_score` — the maximum cosine between the input and the
  labels, standardised with the model's in-scope max-cosine mean/deviation from the registry
  (``ModelSpec.oos_cosine_mean`` / ``oos_cosine_std``, measured on the CLINC150 training split).

:func:`abstain` applies either a target false-alarm rate or a raw threshold. Nothing here imports Ray.
"""
from __future__ import annotations

from statistics import NormalDist

import numpy as np

__all__ = ["threshold", "zero_shot_oos_score", "fewshot_oos_score", "abstain", "auroc", "recall_at_inscope_recall"]


def threshold(false_alarm_rate: float) -> float:
    """Score threshold for a target false-alarm rate under the standardised (N(0, 1)) in-scope model."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"false_alarm_rate must be in (0, 1), got {false_alarm_rate}")
    return float(NormalDist().inv_cdf(1.0 - false_alarm_rate))


def zero_shot_oos_score(cosines: np.ndarray, spec) -> np.ndarray:
    """(n,) standardised zero-shot OOS score from the (n, L) input-label cosines of one label group:
    ``(oos_cosine_mean - max_k cos) / oos_cosine_std`` with the model's registry calibration."""
    mean, std = getattr(spec, "oos_cosine_mean", None), getattr(spec, "oos_cosine_std", None)
    if mean is None or std is None:
        raise ValueError(f"model {getattr(spec, 'name', spec)!r} has no zero-shot out-of-scope calibration")
    cos = np.asarray(cosines, np.float64)
    return (float(mean) - cos.max(axis=1)) / float(std)


def fewshot_oos_score(predictor, X: np.ndarray, spec, logits: np.ndarray | None = None) -> np.ndarray:
    """(n,) OOS score of a few-shot classifier: its own calibrated score once it has examples — except where
    the winner is a declared class with no example yet, which is judged by the zero-shot rule on its label
    cosine (its Gaussian calibration rests on the label prior alone and would flag nearly every input); a
    classifier with declared labels only scores like zero-shot (its logits are ``score_scale * cos``), so it
    uses the zero-shot rule on ``logits / score_scale``."""
    z = predictor.decision_function(X) if logits is None else np.asarray(logits, np.float64)
    if predictor.oos_calibrated:
        mean, std = getattr(spec, "oos_cosine_mean", None), getattr(spec, "oos_cosine_std", None)
        zero_shot = (float(mean), float(std)) if mean is not None and std is not None else None
        return predictor.oos_score(X, logits=z, zero_shot=zero_shot)
    return zero_shot_oos_score(z / float(spec.score_scale), spec)


def abstain(scores: np.ndarray, *, false_alarm_rate: float | None = None, thresh: float | None = None) -> np.ndarray:
    """(n,) bool: True where the input is out of scope. Exactly one of ``false_alarm_rate`` (target share of
    in-scope inputs flagged; calibrated) or ``thresh`` (a raw threshold on the standardised score)."""
    if false_alarm_rate is not None and thresh is None:
        t = threshold(false_alarm_rate)
    elif thresh is not None and false_alarm_rate is None:
        t = float(thresh)
    else:
        raise ValueError("give exactly one of false_alarm_rate or thresh")
    return np.asarray(scores, np.float64) > t


# ------------------------------------------------------------------------------------- evaluation metrics
def auroc(in_scores: np.ndarray, out_scores: np.ndarray) -> float:
    """Area under the ROC curve for telling out-of-scope (positive) from in-scope inputs by score (larger =
    more out of scope); ties count one half (Mann-Whitney U)."""
    a = np.asarray(in_scores, np.float64)
    o = np.asarray(out_scores, np.float64)
    allv = np.concatenate([a, o])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sv = allv[order]
    i = 0
    while i < len(sv):  # average ranks over ties
        j = i
        while j + 1 < len(sv) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    r_out = ranks[len(a):].sum()
    return float((r_out - len(o) * (len(o) + 1) / 2.0) / (len(o) * len(a)))


def recall_at_inscope_recall(in_scores: np.ndarray, out_scores: np.ndarray, inscope_recall: float = 0.95) -> float:
    """Share of out-of-scope inputs flagged at the threshold that keeps ``inscope_recall`` of the in-scope
    inputs (the operating point of Larson et al. 2019, CLINC150)."""
    t = np.quantile(np.asarray(in_scores, np.float64), inscope_recall)
    return float(np.mean(np.asarray(out_scores, np.float64) > t))


def roc_curve(in_scores: np.ndarray, out_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false-alarm rate, OOS recall) at every threshold, for plots."""
    a, o = np.sort(np.asarray(in_scores, np.float64)), np.asarray(out_scores, np.float64)
    ts = np.unique(np.concatenate([a, o]))[::-1]
    fpr = np.array([0.0] + [float(np.mean(a >= t)) for t in ts])
    tpr = np.array([0.0] + [float(np.mean(o >= t)) for t in ts])
    return fpr, tpr
