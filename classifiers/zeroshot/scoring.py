"""Zero-shot scoring: labels are embedded like inputs and compared by cosine similarity.

Scores are a probability distribution over the labels of a group: ``softmax(scale * cos(x, label))``.
``scale`` is the model's inverse temperature from the registry, fitted so that scores are calibrated on
real data (docs/eval/report.md). With label groups, each group gets its own distribution and prediction.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.protocol.errors import InvalidInput, InvalidLabels, LabelLimitExceeded
from classifiers.protocol.wire import Abstain, ClassificationPrediction, PredictionLabel
from classifiers.request.inputs import check_label_chars, checked_label, preview
from classifiers.request.limits import Limits
from classifiers.zeroshot.oos import abstain as oos_abstain
from classifiers.zeroshot.oos import zero_shot_oos_score


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
    inputs: np.ndarray, label_set: LabelSet, vectors: dict[str, np.ndarray], spec: ModelSpec, abstain: Abstain | None = None
) -> list[ClassificationPrediction]:
    """Jina's per-input result objects; labels keep the request's order within each group. With ``abstain``,
    each group also gets its out-of-scope score (max cosine against the model's calibration) and decision."""
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
        per_group[name] = GroupScores(labels, softmax(spec.score_scale * cos), oos)
    return build_predictions(per_group, grouped=label_set.grouped, abstain=abstain)


@dataclass(frozen=True)
class GroupScores:
    """One label group's (or a few-shot classifier's) labels, (N, L) probabilities and optional (N,) OOS scores."""

    labels: list[str]
    probs: np.ndarray
    oos: np.ndarray | None = None


def build_predictions(
    per_group: dict[str | None, GroupScores], *, grouped: bool, abstain: Abstain | None = None
) -> list[ClassificationPrediction]:
    """Result objects from per-group scores; group None means a flat label list. The out-of-scope fields are
    filled only when ``abstain`` was asked for (otherwise the result is exactly Jina's)."""
    flags = {
        name: oos_abstain(g.oos, false_alarm_rate=abstain.false_alarm_rate, thresh=abstain.threshold)
        for name, g in per_group.items() if abstain is not None and g.oos is not None
    }
    n = next(iter(per_group.values())).probs.shape[0]
    out = []
    for i in range(n):
        fields = {}
        for name, g in per_group.items():
            p = g.probs[i]
            best = int(np.argmax(p))
            oos = (bool(flags[name][i]), float(g.oos[i])) if name in flags and g.oos is not None else (None, None)
            # model_construct: labels and scores are ours, already valid; validating 256 of them per input was
            # most of the cost of a many-label request (docs/benchmarks.md).
            scores = p.tolist()
            fields[name] = (
                g.labels[best], scores[best],
                [PredictionLabel.model_construct(label=lab, score=s) for lab, s in zip(g.labels, scores, strict=True)], *oos
            )
        if grouped:
            extra = {}
            if flags:
                extra = {"out_of_scope": {k: f[3] for k, f in fields.items()}, "oos_score": {k: f[4] for k, f in fields.items()}}
            out.append(
                ClassificationPrediction(
                    index=i,
                    prediction={k: f[0] for k, f in fields.items()},
                    score={k: f[1] for k, f in fields.items()},
                    predictions={k: f[2] for k, f in fields.items()},
                    **extra,
                )
            )
        else:
            pred, sc, preds, flag, oos = fields[None]
            out.append(ClassificationPrediction(index=i, prediction=pred, score=sc, predictions=preds, out_of_scope=flag, oos_score=oos))
    return out
