"""Parsing the answers into the wire models, tolerant of Jina's hosted API, whose answers lack our extra fields.

The service's own answers parse into the models it built them from (``classifiers/protocol/``); an answer of Jina's
(no ``num_samples`` in a listing, no ``usage`` on train, model cards without ``served_by``) parses too, with our
fields None, so one client works against both by base URL.
"""
from __future__ import annotations

from typing import Any

from classifiers.protocol.info import ModelCard, ModelList, ServedBy
from classifiers.protocol.wire import ClassifierSummary, TrainingResponse


class _HostedClassifierSummary(ClassifierSummary):
    """A listing entry from a service without our ``num_samples`` (Jina's hosted API): None there."""

    num_samples: int | None = None  # type: ignore[assignment]  # deliberately wider than the base model's int


def _parse_summary(d: Any) -> ClassifierSummary:
    if isinstance(d, dict) and "num_samples" not in d:
        return _HostedClassifierSummary.model_validate(d)
    return ClassifierSummary.model_validate(d)


def parse_list(body: Any) -> list[ClassifierSummary]:
    if isinstance(body, dict) and isinstance(body.get("data"), list):  # tolerate a {"data": [...]} envelope
        body = body["data"]
    return [_parse_summary(d) for d in body]


def parse_train(body: Any) -> TrainingResponse:
    if isinstance(body, dict) and "usage" not in body:  # optional in Jina's spec
        body = {**body, "usage": {"total_tokens": 0}}
    return TrainingResponse.model_validate(body)


class _HostedModelCard(ModelCard):
    """A model card from a service without our fields (Jina's hosted API): None there."""

    alias_of: str | None = None
    served_by: ServedBy | None = None  # type: ignore[assignment]  # deliberately wider than the base model's
    score_scale: float | None = None  # type: ignore[assignment]
    multi_label_threshold: float | None = None
    matryoshka: bool | None = None  # type: ignore[assignment]


def parse_models(body: Any) -> ModelList:
    """``GET /v1/models``: our ``ModelList``, or Jina's ``ModelListResponse`` (cards without our fields)."""
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        body = {**body, "data": [_HostedModelCard.model_validate(d) if isinstance(d, dict) and "served_by" not in d
                                 else d for d in body["data"]]}
    return ModelList.model_validate(body)
