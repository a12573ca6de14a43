"""Zero-shot classification: parse, check, embed inputs and labels, score. No Ray imports.

Every client-fixable problem raises a typed :mod:`classifiers.protocol.errors` error before or instead of any model work.
"""
from __future__ import annotations

from classifiers.catalog.registry import Registry
from classifiers.embedding.tokens import TokenBudget
from classifiers.embedding.vectors import Vectors
from classifiers.protocol.errors import InputLimitExceeded, InvalidInput
from classifiers.protocol.wire import ClassificationResponse, ClassifyRequest, Usage
from classifiers.request.inputs import check_modalities, parse_inputs
from classifiers.request.limits import Limits
from classifiers.zeroshot.scoring import LabelSet, parse_labels, predictions

PREDICTION_BYTES = 48  # one {"label": ..., "score": ...} entry without the label text, JSON-encoded


def check_response_size(n_inputs: int, label_set: LabelSet, limit: int) -> None:
    """Every label is echoed once per input: refuse a request whose answer would be over ``limit`` bytes."""
    per_input = sum(len((g or "").encode()) + sum(len(lab.encode()) + PREDICTION_BYTES for lab in labels) + 96
                    for g, labels in label_set.groups.items())
    if n_inputs * per_input > limit:
        raise InputLimitExceeded(
            f"the response would be about {n_inputs * per_input // 1_000_000} MB ({n_inputs} inputs x "
            f"{per_input} bytes of labels each), over the limit of {limit // 1_000_000} MB: send fewer inputs or "
            "fewer/shorter labels per request"
        )


class ZeroShotService:
    def __init__(self, *, registry: Registry, limits: Limits, vectors: Vectors):
        self.registry = registry
        self.limits = limits
        self.vectors = vectors

    async def classify(
        self, req: ClassifyRequest, *, budget: TokenBudget | None = None, tenant: str = ""
    ) -> ClassificationResponse:
        """``budget``: what the caller may spend; the request's input and label tokens are counted and admitted
        through it before any model work. ``tenant``: whose work this is in the embedders' fair queues."""
        if req.model is None:
            raise InvalidInput("zero-shot classification needs `model` and `labels`")
        spec = self.registry.get(req.model)
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        check_modalities(items, spec, self.registry.with_image_support())
        label_set = parse_labels(req.labels, self.limits)
        check_response_size(len(items), label_set, self.limits.max_response_bytes)
        labels = label_set.unique()
        counted = await self.vectors.count(spec, items, labels=labels, budget=budget)
        vectors, label_vectors = await self.vectors.inputs_and_labels(spec, items, labels, counted, tenant=tenant)
        data = predictions(vectors, label_set, label_vectors, spec, req.abstain, req.multi_label_threshold())
        return ClassificationResponse(data=data, usage=Usage(total_tokens=counted.total))
