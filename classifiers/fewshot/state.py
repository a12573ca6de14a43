"""The persisted form of a :class:`classifiers.fewshot.learner.FewShotLearner`: JSON-able scalars and lists plus numpy
arrays (the store writes the arrays as .npz), its versions and its exact size.

Versions: 2 adds `declared`, 3 `oos_moments`, 4 the calibration records (`temp_profile`, `temp_weight`,
`label_pooled`, `label_hist`), 5 the unlabelled statistics (`unl_n`, `unl_s`, `inputs_learned`); older states still
load, with empty records and statistics where theirs are missing. A newer version is refused, never misread.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from classifiers.fewshot import calibration as cal
from classifiers.fewshot.calibration import LabelRecord, TemperatureRecord
from classifiers.fewshot.learner_config import LearnerConfig
from classifiers.fewshot.unlabeled import CLASS_BYTES_PER_DIM, UnlabeledRecord

STATE_VERSION = 5
READABLE_VERSIONS = (1, 2, 3, 4, 5)


class LearnerFields(Protocol):
    """What of a learner its state holds (FewShotLearner has these): typed here so that this module needs nothing
    from learner.py, which imports it."""

    @property
    def dim(self) -> int: ...
    @property
    def score_scale(self) -> float: ...
    @property
    def config(self) -> LearnerConfig: ...
    @property
    def covariance(self) -> str: ...
    _labels: list[str]
    _index: dict[str, int]
    _n: np.ndarray
    _s: np.ndarray
    _S: np.ndarray
    _L: np.ndarray
    _has_L: np.ndarray
    _declared: np.ndarray
    _oos_moments: np.ndarray
    _temp: TemperatureRecord
    _label_rec: LabelRecord
    _unl: UnlabeledRecord


def scatter_bytes(dim: int, full: bool) -> int:
    return 8 * dim * (dim + 1) // 2 if full else 8 * dim


def state_bytes(dim: int, classes: int, full: bool) -> int:
    """Bytes of a state's arrays: the scatter, the records, and per class its count, sum, label vector (float32),
    two flags, its label histograms and its unlabelled count and sum (the OOS moments: 24 bytes)."""
    unl = 8 + CLASS_BYTES_PER_DIM * dim
    return scatter_bytes(dim, full) + 24 + cal.RECORD_BYTES + classes * (8 + 12 * dim + 2 + cal.LABEL_CLASS_BYTES + unl)


def check_version(state: dict) -> None:
    if int(state.get("version", -1)) not in READABLE_VERSIONS:
        raise ValueError(f"unsupported few-shot state version {state.get('version')!r}")


def to_state(lrn: LearnerFields) -> dict:
    """Everything needed to restore the learner (copies, nothing shared with it)."""
    S = lrn._S[np.triu_indices(lrn.dim)] if lrn.covariance == "full" else lrn._S
    return {
        "version": STATE_VERSION,
        "dim": lrn.dim,
        "score_scale": lrn.score_scale,
        "config": lrn.config.model_dump(),
        "covariance": lrn.covariance,
        "labels": list(lrn._labels),
        "n": lrn._n.copy(),
        "s": lrn._s.copy(),
        "S": S.copy(),
        "L": lrn._L.copy(),
        "has_L": lrn._has_L.copy(),
        "declared": lrn._declared.copy(),
        "oos_moments": lrn._oos_moments.copy(),
        "temp_profile": lrn._temp.profile.copy(),
        "temp_weight": lrn._temp.weight,
        "label_pooled": lrn._label_rec.pooled.copy(),
        "label_hist": lrn._label_rec.per_class.copy(),
        "unl_n": lrn._unl.n.copy(),
        "unl_s": lrn._unl.s.copy(),
        "inputs_learned": lrn._unl.learned,
    }


def restore(lrn: LearnerFields, state: dict) -> None:
    """Fill a new learner (built with the state's dim, score_scale and config) from ``state``."""
    D = lrn.dim
    lrn._labels = [str(x) for x in state["labels"]]
    lrn._index = {lab: i for i, lab in enumerate(lrn._labels)}
    K = len(lrn._labels)
    lrn._n = np.asarray(state["n"], np.float64).reshape(K).copy()
    lrn._s = np.asarray(state["s"], np.float64).reshape(K, D).copy()
    lrn._L = np.asarray(state["L"], np.float32).reshape(K, D).copy()
    lrn._has_L = np.asarray(state["has_L"], bool).reshape(K).copy()
    declared = state.get("declared")  # absent in version-1 states: nothing was declared
    lrn._declared = np.zeros(K, bool) if declared is None else np.asarray(declared, bool).reshape(K).copy()
    moments = state.get("oos_moments")  # absent before version 3: no record, the Gaussian calibration alone
    lrn._oos_moments = np.zeros(3) if moments is None else np.asarray(moments, np.float64).reshape(3).copy()
    # absent before version 4: empty records, i.e. tau = 1 and no label calibration (the old answers exactly)
    lrn._temp = TemperatureRecord(state.get("temp_profile"), float(state.get("temp_weight", 0.0)))
    lrn._label_rec = LabelRecord(K, state.get("label_pooled"), state.get("label_hist"))
    # absent before version 5: nothing learned from classified inputs (the old answers exactly)
    lrn._unl = UnlabeledRecord(K, D, state.get("unl_n"), state.get("unl_s"), int(state.get("inputs_learned", 0)))
    S = np.asarray(state["S"], np.float64)
    if lrn.covariance == "full":
        full = np.zeros((D, D))
        full[np.triu_indices(D)] = S
        lrn._S = full + np.triu(full, 1).T
    else:
        lrn._S = S.reshape(D).copy()
