"""Zero-shot scoring: labels are embedded like inputs and compared by cosine similarity.

Scores are a probability distribution over the labels of a group: ``softmax(scale * cos(x, label))``.
``scale`` is the model's inverse temperature from the registry, fitted so that scores are calibrated on
real data (docs/eval/report.md). With label groups, each group gets its own distribution and prediction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import TypeAdapter

from classifiers.catalog.registry import ModelSpec
from classifiers.protocol.errors import InvalidInput, InvalidLabels, LabelLimitExceeded
from classifiers.protocol.wire import Abstain, ClassificationPrediction, MultiLabel, PredictionLabel
from classifiers.request.inputs import check_label_chars, checked_label, preview
from classifiers.request.limits import Limits
from classifiers.zeroshot.oos import abstain as oos_abstain
from classifiers.zeroshot.oos import zero_shot_oos_score

UNCALIBRATED_THRESHOLD = 0.5  # zero-shot multi-label default of a model whose catalog entry fits none
_PREDICTION_LIST = TypeAdapter(list[PredictionLabel])  # built once: a TypeAdapter compiles its schema


@dataclass(frozen=True)
class LabelSet:
    """Labels of a request: ``groups`` maps a group name (None for a flat list) to its labels in order."""

    groups: dict[str | None, list[str]]

    @property
    def grouped(self) -> bool:
        return None not in self.groups

    def unique(self) -> list[str]:
        return list(dict.fromkeys(label for labels in self.groups.values() for label in labels))


def _check_group(labels: list[str], where: str, limit: int, max_chars: int) -> list[str]:
    """Check each label's length (before any other work on it), normalise and collapse duplicates (first occurrence
    wins), then apply the count rules to what is left."""
    normalized = [checked_label(lab, f"label {i}{where}", max_chars) for i, lab in enumerate(labels)]
    for i, lab in enumerate(normalized):
        if not lab:
            raise InvalidLabels(f"label {i}{where} is empty")
    unique = list(dict.fromkeys(normalized))
    if len(unique) > limit:
        raise LabelLimitExceeded(f"Label limit exceeded: {len(unique)} labels provided{where}, maximum {limit} allowed")
    if len(unique) < 2:
        raise InvalidLabels(f"At least 2 distinct labels are required{where}, got {len(unique)}")
    return unique


def parse_labels(labels: list[str] | dict[str, list[str]] | None, limits: Limits) -> LabelSet:
    if labels is None:
        raise InvalidLabels("zero-shot classification needs `labels` (or a `classifier_id` for few-shot)")
    if isinstance(labels, list):
        return LabelSet({None: _check_group(labels, "", limits.max_labels, limits.max_label_chars)})
    if not labels:
        raise InvalidLabels("`labels` is an empty dict: give at least one label group")
    if len(labels) > limits.max_label_groups:
        raise LabelLimitExceeded(
            f"Label limit exceeded: {len(labels)} label groups provided, maximum {limits.max_label_groups} allowed"
        )
    for g, name in enumerate(labels):  # every name before any label: names are echoed in every label's error
        check_label_chars(name, f"the name of label group {g}", limits.max_label_group_chars)
    groups: dict[str | None, list[str]] = {}
    for name, group in labels.items():
        if not name.strip():
            raise InvalidLabels("a label group has an empty name")
        groups[name] = _check_group(
            group, f" in group {preview(name)}", limits.max_labels_per_group, limits.max_label_chars
        )
    return LabelSet(groups)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def score(inputs: np.ndarray, label_vectors: np.ndarray, scale: float) -> np.ndarray:
    """(N, L) probabilities from L2-normalised input (N, D) and label (L, D) vectors."""
    return softmax(scale * (inputs @ label_vectors.T))


def predictions(
    inputs: np.ndarray, label_set: LabelSet, vectors: dict[str, np.ndarray], spec: ModelSpec,
    abstain: Abstain | None = None, multi_label: MultiLabel | None = None,
) -> list[ClassificationPrediction]:
    """Jina's per-input result objects; labels keep the request's order within each group. With ``abstain``,
    each group also gets its out-of-scope score (max cosine against the model's calibration) and decision; with
    ``multi_label``, every label whose calibrated share reaches the threshold (:func:`zero_shot_multi_label`)."""
    per_group = {}
    for name, labels in label_set.groups.items():
        mat = np.stack([vectors[lab] for lab in labels])
        cos = inputs @ mat.T
        oos = None
        if abstain is not None:
            try:
                oos = zero_shot_oos_score(cos, spec)
            except ValueError as err:  # a model without a zero-shot calibration (Hub models)
                raise InvalidInput(f"`abstain` is not available for model {spec.name!r}: {err}") from err
        probs = softmax(spec.score_scale * cos)
        predicted = None if multi_label is None else probs >= zero_shot_threshold(spec, multi_label)
        per_group[name] = GroupScores(labels, probs, oos, probs if predicted is not None else None, predicted)
    return build_predictions(per_group, grouped=label_set.grouped, abstain=abstain)


def zero_shot_threshold(spec: ModelSpec, multi_label: MultiLabel) -> float:
    """The share a label must reach to apply in zero-shot multi-label mode: the request's threshold, else the
    model's calibrated default (``ModelSpec.multi_label_threshold``), else one half.

    Why the share itself: in zero-shot each label's calibrated share is the best probability that it applies that
    carries across data sets (docs/eval/report.md: rules on raw cosines or sigmoids fitted on one data set lose on
    the other); label sets are arbitrary, so nothing per label can be learned."""
    if multi_label.threshold is not None:
        return multi_label.threshold
    return spec.multi_label_threshold if spec.multi_label_threshold is not None else UNCALIBRATED_THRESHOLD


@dataclass(frozen=True)
class GroupScores:
    """One label group's (or a few-shot classifier's) labels and (N, L) probabilities (summing to 1), optional (N,)
    out-of-scope scores, and in multi-label mode each label's own probability and which labels apply."""

    labels: list[str]
    probs: np.ndarray
    oos: np.ndarray | None = None
    label_probs: np.ndarray | None = None  # (N, L), multi-label mode: the probability that each label applies
    predicted: np.ndarray | None = None  # (N, L) bool, multi-label mode: the labels that apply


@dataclass
class _Group:
    """One group's answer fields, computed for all inputs at once."""

    labels: list[str]
    best: list[int]
    shown: list[list[float]]  # the scores reported per label: shares, or each label's own probability
    flags: np.ndarray | None
    oos: list[float] | None
    predicted: list[list[str]] | None

    @classmethod
    def of(cls, g: GroupScores, abstain: Abstain | None) -> _Group:
        flags = None
        if abstain is not None and g.oos is not None:
            flags = oos_abstain(g.oos, false_alarm_rate=abstain.false_alarm_rate, thresh=abstain.threshold)
        predicted = None
        shown = g.probs
        if g.predicted is not None and g.label_probs is not None:
            shown = g.label_probs
            mask = g.predicted if flags is None else g.predicted & ~flags[:, None]  # out of scope: no label applies
            order = np.argsort(-shown, axis=1, kind="stable")  # most probable first
            kept = np.take_along_axis(mask, order, 1)
            predicted = [[g.labels[j] for j in row[keep]] for row, keep in zip(order, kept, strict=True)]
        return cls(g.labels, np.argmax(g.probs, axis=1).tolist(), shown.tolist(), flags,
                   None if flags is None or g.oos is None else g.oos.tolist(), predicted)

    def fields(self, i: int) -> tuple:
        """(prediction, score, predictions, out_of_scope, oos_score, predicted_labels) of input ``i``."""
        best, scores = self.best[i], self.shown[i]
        # One validation of the whole list in pydantic's core: 256 labels in 0.2 ms, where model_construct per label
        # (Python, 0.7 ms) or PredictionLabel(...) per label (0.34 ms) was most of a many-label request's own cost.
        preds = _PREDICTION_LIST.validate_python(
            [{"label": lab, "score": s} for lab, s in zip(self.labels, scores, strict=True)]
        )
        flag = None if self.flags is None else bool(self.flags[i])
        oos = None if self.oos is None else self.oos[i]
        return self.labels[best], scores[best], preds, flag, oos, None if self.predicted is None else self.predicted[i]


def build_predictions(
    per_group: dict[str | None, GroupScores], *, grouped: bool, abstain: Abstain | None = None
) -> list[ClassificationPrediction]:
    """Result objects from per-group scores; group None means a flat label list. The out-of-scope fields are
    filled only when ``abstain`` was asked for and ``predicted_labels`` only in multi-label mode (otherwise the
    result is exactly Jina's). The prediction is the most probable label; in multi-label mode each label's score
    is its own probability."""
    groups = {name: _Group.of(g, abstain) for name, g in per_group.items()}
    n = next(iter(per_group.values())).probs.shape[0]
    out = []
    for i in range(n):
        fields = {name: grp.fields(i) for name, grp in groups.items()}
        if not grouped:
            pred, sc, preds, flag, oos, labels = fields[None]
            out.append(ClassificationPrediction(index=i, prediction=pred, score=sc, predictions=preds, out_of_scope=flag,
                                                oos_score=oos, predicted_labels=labels))
            continue
        extra: dict = {}
        if abstain is not None and all(grp.flags is not None for grp in groups.values()):
            extra = {"out_of_scope": {k: f[3] for k, f in fields.items()}, "oos_score": {k: f[4] for k, f in fields.items()}}
        if all(grp.predicted is not None for grp in groups.values()):
            extra["predicted_labels"] = {k: f[5] for k, f in fields.items()}
        out.append(ClassificationPrediction(
            index=i, prediction={k: f[0] for k, f in fields.items()}, score={k: f[1] for k, f in fields.items()},
            predictions={k: f[2] for k, f in fields.items()}, **extra,
        ))
    return out
