"""The operations behind the routes, one adapter each, shared by HTTP and Python-handle callers.

A caller reaches an operation with its :class:`Call` (who it is, and what the edge already did for it), and the
operation builds the request's :class:`~serve_app.admission.OperationContext` once (mode, operation, model tag,
input count) and runs the service under admission: the HTTP routes and the handle methods of the Ingress differ
only in how they name the caller and return the answer. No HTTP here, and no Ray.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from classifiers.accounts.keys import Principal
from classifiers.catalog.registry import Registry
from classifiers.embedding.service import EmbeddingsService
from classifiers.fewshot.service import FewShotService, TrainResult
from classifiers.protocol.errors import InvalidInput, ServiceError
from classifiers.protocol.wire import (
    ClassificationResponse,
    ClassifyRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    TrainingResponse,
    TrainRequest,
)
from classifiers.zeroshot.service import ZeroShotService
from serve_app.admission import AdmissionControl, HeaderSink, OperationContext

MAX_IDEMPOTENCY_KEY = 255


@dataclass(frozen=True)
class Call:
    """A caller, as the edge saw it: its principal, where the response's rate-limit headers go (HTTP), whether the
    HTTP edge already took its place (``InflightLimits``), and a /train's ``Idempotency-Key``."""

    principal: Principal
    rate_headers: HeaderSink | None = None
    placed: bool = False
    idempotency_key: str | None = None


def update_id_of(principal: Principal, idempotency_key: str | None) -> str | None:
    """A client's retry key, scoped to its account: a retried /train with the same key is applied once (bound to
    its first body by the few-shot service's fingerprint, so a different body under it is refused, not replayed)."""
    if not idempotency_key:
        return None
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY} printable characters")
    return hashlib.sha256(f"{principal.account_id}\x00{idempotency_key}".encode()).hexdigest()[:32]


def _count(items) -> int:
    return len(items) if isinstance(items, list) else 1


class Operations:
    """classify, train and embed: each one context, admission, one service call and its charge."""

    def __init__(
        self, *, registry: Registry, admission: AdmissionControl, zeroshot: ZeroShotService, fewshot: FewShotService,
        embeddings: EmbeddingsService,
    ):
        self.registry = registry
        self.admission = admission
        self.zeroshot = zeroshot
        self.fewshot = fewshot
        self.embeddings = embeddings

    def model_tag(self, name: str | None) -> str:
        """A bounded metrics tag: the served model's canonical name, else `unknown` (never client text)."""
        try:
            return self.registry.get(name).name if name else "classifier"
        except ServiceError:
            return "unknown"

    def context(self, call: Call, mode, model: str | None, items, op: str | None = None) -> OperationContext:
        return OperationContext(call.principal, mode, self.model_tag(model), _count(items), op, call.rate_headers, call.placed)

    async def classify(self, body: ClassifyRequest, call: Call) -> ClassificationResponse:
        """Zero-shot (labels) or few-shot (classifier_id), charged its counted tokens."""
        p = call.principal
        if body.classifier_id is not None:
            ctx = self.context(call, "fewshot", body.model, body.input, op="classify")
            return await self.admission.run(
                ctx, lambda t: self.fewshot.classify(body, p.account_id, budget=t, tenant=p.rate_subject),
                lambda r: r.usage.total_tokens,
            )
        ctx = self.context(call, "zeroshot", body.model, body.input)
        return await self.admission.run(
            ctx, lambda t: self.zeroshot.classify(body, budget=t, tenant=p.rate_subject), lambda r: r.usage.total_tokens
        )

    async def train(self, body: TrainRequest, call: Call) -> TrainingResponse:
        """Create or update a classifier. Charged when the update is submitted to its state shard, not when it
        returns: an update the client abandons (disconnects) after submitting is applied by the shard and paid for,
        so a retry with the same key (a free replay) gets nothing for free. Failed requests (4xx/5xx, the 409 and 422
        of a key in use or reused with another body included: they applied nothing) and replays are refunded."""
        p = call.principal
        update_id = update_id_of(p, call.idempotency_key)
        ctx = self.context(call, "train", body.model, body.input, op="create" if body.classifier_id is None else "update")
        result: TrainResult = await self.admission.run(
            ctx, lambda t: self.fewshot.train(body, p.account_id, update_id=update_id, budget=t, on_submit=t.done,
                                              tenant=p.rate_subject),
            lambda r: None if r.replayed else r.response.usage.total_tokens,
        )
        return result.response

    async def embed(self, body: EmbeddingsRequest, call: Call) -> EmbeddingsResponse:
        """/v1/embeddings, charged its counted tokens."""
        ctx = self.context(call, "embeddings", body.model, body.input)
        return await self.admission.run(
            ctx, lambda t: self.embeddings.embed(body, budget=t, tenant=call.principal.rate_subject),
            lambda r: r.usage.total_tokens,
        )
