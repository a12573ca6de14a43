"""The JSON bodies of the requests: Jina's fields only, plus our extensions where the caller asked for them.

Kept apart from sending so the wire format is checked without a server, and so a body sent to Jina's hosted API
carries nothing it does not know (``abstain``, ``multi_label``, declared ``labels`` and ``learn_from_inputs`` are
sent only when given).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

from pydantic import BaseModel

from classifiers.protocol.wire import Abstain, MultiLabel


def _item(x: Any) -> Any:
    if isinstance(x, BaseModel):
        return x.model_dump(exclude_none=True)
    if isinstance(x, str):
        return x
    if isinstance(x, Mapping):
        return dict(x)
    raise TypeError(f"an input is a string, {{'text': ...}}, {{'image': ...}} or a TextDoc/ImageDoc; got {type(x).__name__}")


def _inputs(inputs: Any) -> list:
    if isinstance(inputs, (str, Mapping, BaseModel)):
        return [_item(inputs)]
    return [_item(x) for x in inputs]


def _labels(labels: Any) -> list[str] | dict[str, list[str]]:
    if isinstance(labels, str):
        raise TypeError("labels is a list of strings or a dict of label groups, not one string")
    if isinstance(labels, Mapping):
        return {str(k): _labels(v) for k, v in labels.items()}  # type: ignore[misc]  # a group's labels are a list
    return [str(x) for x in labels]


def _example(x: Any) -> dict:
    if isinstance(x, BaseModel):
        return x.model_dump(exclude_none=True)
    if isinstance(x, Mapping):
        return dict(x)
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return {"text": x[0], "label": x[1] if isinstance(x[1], str) else [str(lab) for lab in x[1]]}
    raise TypeError(
        f"a training example is (text, label or [labels]), {{'text'|'image', 'label'}} or a TrainingItem; got {x!r}"
    )


def classify_body(
    inputs: Any, *, labels: Any = None, model: str | None = None, classifier_id: str | None = None, abstain: Any = None,
    multi_label: Any = None,
) -> dict:
    """The JSON body of ``POST /v1/classify``: only the fields given (``abstain`` and ``multi_label`` are ours, sent
    only when set). ``abstain`` is an :class:`~classifiers.protocol.wire.Abstain`, a dict like
    ``{"false_alarm_rate": 0.05}``, or a float (taken as the false-alarm rate); ``multi_label`` is ``True``, a
    threshold (a float), a dict like ``{"threshold": 0.3}`` or a :class:`~classifiers.protocol.wire.MultiLabel`."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    if classifier_id is not None:
        body["classifier_id"] = classifier_id
    body["input"] = _inputs(inputs)
    if labels is not None:
        body["labels"] = _labels(labels)
    if abstain is not None:
        if isinstance(abstain, (int, float)) and not isinstance(abstain, bool):
            abstain = {"false_alarm_rate": float(abstain)}
        body["abstain"] = abstain.model_dump(exclude_none=True) if isinstance(abstain, Abstain) else dict(abstain)
    if multi_label is not None and multi_label is not False:
        if isinstance(multi_label, (int, float)) and not isinstance(multi_label, bool):
            multi_label = {"threshold": float(multi_label)}
        body["multi_label"] = (multi_label.model_dump(exclude_none=True) if isinstance(multi_label, MultiLabel)
                               else multi_label if multi_label is True else dict(multi_label))
    return body


def train_body(
    examples: Iterable[Any], *, model: str | None = None, classifier_id: str | None = None, access: str | None = "private",
    num_iters: int | None = 10, labels: Sequence[str] | None = None, learn_from_inputs: bool | None = None,
) -> dict:
    """The JSON body of ``POST /v1/train``. A create (no ``classifier_id``) sends ``model`` (if given), ``access``,
    ``input`` and ``num_iters``; an update sends ``classifier_id``, ``input`` and ``num_iters`` (the model and access
    of a classifier are fixed at its creation). ``labels`` (declared classes, ours) and ``learn_from_inputs`` (ours)
    only when given."""
    body: dict[str, Any] = {}
    if classifier_id is not None:
        body["classifier_id"] = classifier_id
    else:
        if model is not None:
            body["model"] = model
        if access is not None:
            body["access"] = access
    body["input"] = [_example(x) for x in examples]
    if num_iters is not None:
        body["num_iters"] = num_iters
    if labels is not None:
        body["labels"] = _labels(labels)
    if learn_from_inputs is not None:
        body["learn_from_inputs"] = bool(learn_from_inputs)
    return body


def embeddings_body(inputs: Any, *, model: str, **options: Any) -> dict:
    """The JSON body of ``POST /v1/embeddings`` (Jina's format): ``model``, ``input`` and the options given
    (``task``, ``dimensions``, ``embedding_type``, ``normalized``, ``truncate``, ...); None values are left out."""
    return {"model": model, "input": _inputs(inputs), **{k: v for k, v in options.items() if v is not None}}
