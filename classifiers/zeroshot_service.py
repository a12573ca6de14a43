"""Zero-shot classification: parse, check, embed inputs and labels, score. No Ray imports.

Every client-fixable problem raises a typed :mod:`classifiers.errors` error before or instead of any model work.
"""
from __future__ import annotations

import asyncio

from classifiers.api import ClassificationResponse, ClassifyRequest, Usage
from classifiers.errors import InvalidInput
from classifiers.inputs import check_modalities, parse_inputs
from classifiers.limits import Limits
from classifiers.registry import Registry
from classifiers.vectors import Vectors, over_token_budget
from classifiers.zeroshot import parse_labels, predictions


class ZeroShotService:
    def __init__(self, *, registry: Registry, limits: Limits, vectors: Vectors):
        self.registry = registry
        self.limits = limits
        self.vectors = vectors

    async def classify(self, req: ClassifyRequest, *, max_tokens: int | None = None) -> ClassificationResponse:
        """``max_tokens``: the caller's token budget (its TPM); a request over it is refused (RateLimited)."""
        if req.model is None:
            raise InvalidInput("zero-shot classification needs `model` and `labels`")
        spec = self.registry.get(req.model)
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        check_modalities(items, spec, self.registry.with_image_support())
        label_set = parse_labels(req.labels, self.limits)
        (vectors, input_tokens), (label_vectors, label_tokens) = await asyncio.gather(
            self.vectors.inputs(spec, items, max_total_tokens=max_tokens), self.vectors.labels(spec, label_set.unique())
        )
        if max_tokens is not None and input_tokens + label_tokens > max_tokens:
            raise over_token_budget(input_tokens + label_tokens, max_tokens)
        data = predictions(vectors, label_set, label_vectors, spec, req.abstain)
        return ClassificationResponse(data=data, usage=Usage(total_tokens=input_tokens + label_tokens))
