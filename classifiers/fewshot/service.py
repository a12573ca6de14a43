"""Few-shot classification: /train (create, update), /classify by classifier_id, list, delete. No Ray imports.

Everything a client can get wrong is checked here before any model work; what a concurrent request could change
(the class limit, the owner's quota) is checked again, authoritatively, by the repository under its locks.

Remote calls: a classifier's model, owner and access never change after its create, so they are cached here by
id; with a warm cache a classify or an update is one repository call (one actor call in the Ray repo).
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable

import numpy as np

from classifiers.catalog.registry import ModelSpec, Registry
from classifiers.embedding.tokens import TokenBudget
from classifiers.embedding.vectors import Counted, Vectors
from classifiers.fewshot.repository import ClassifierInfo, ClassifierRepo, LabelQuery, NewClassifier, TrainBatch
from classifiers.protocol.errors import InvalidInput, InvalidLabels, LabelLimitExceeded, classifier_not_found
from classifiers.protocol.wire import (
    ClassificationResponse,
    ClassifierSummary,
    ClassifyRequest,
    DeleteResponse,
    TrainingResponse,
    TrainRequest,
    Usage,
)
from classifiers.request.inputs import (
    ExampleLabels,
    Item,
    check_modalities,
    labels_of,
    parse_declared_labels,
    parse_inputs,
    parse_training_items,
)
from classifiers.request.limits import Limits
from classifiers.zeroshot.scoring import GroupScores, build_predictions, zero_shot_threshold

DEFAULT_NUM_ITERS = 10  # Jina's default; a batch's weight is num_iters / DEFAULT_NUM_ITERS
# Ids this service issues are UUIDs; anything outside this shape cannot exist and never reaches a store path.
CLASSIFIER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
INFO_CACHE_SIZE = 100_000  # ~200 bytes each


def checked_id(cid: str) -> str:
    if not CLASSIFIER_ID.fullmatch(cid):
        raise classifier_not_found(cid)
    return cid


TRAIN_ROUTE = "POST /v1/train"  # the operation an Idempotency-Key of /train is bound to (HTTP and handle alike)


def train_fingerprint(caller: str, req: TrainRequest) -> str:
    """What a /train under an Idempotency-Key is bound to (IETF draft-ietf-httpapi-idempotency-key-header; Stripe
    does the same): sha256 of the route, the account and the request *as parsed*, as canonical JSON (sorted keys,
    defaults filled in, unknown fields dropped, one item as a list of one). So whitespace, key order or spelling
    out a default never make a genuine retry look different, and any change to what would be applied does."""
    body = req.model_dump(mode="json")
    if body["input"] is None:  # a settings-only update: the same request as with `input: []`
        body["input"] = []
    elif not isinstance(body["input"], list):
        body["input"] = [body["input"]]
    if body["learn_from_inputs"] is None:  # absent: fingerprints stay those of requests from before the field
        del body["learn_from_inputs"]
    canonical = json.dumps({"route": TRAIN_ROUTE, "account": caller, "body": body}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class TrainResult:
    """What a /train did: its response, and whether it was an idempotent replay (answered as the first time and
    paid for then, so not charged again). The billing fact stays out of the wire model."""

    response: TrainingResponse
    replayed: bool = False


def humanize(label: str) -> str:
    """`book_flight` -> `book flight`: the label-name prior embeds words, not identifiers."""
    return " ".join(label.replace("_", " ").replace("-", " ").split()) or label


class FewShotService:
    def __init__(self, *, registry: Registry, limits: Limits, vectors: Vectors, repo: ClassifierRepo):
        self.registry = registry
        self.limits = limits
        self.vectors = vectors
        self.repo = repo
        self._infos: OrderedDict[str, ClassifierInfo] = OrderedDict()

    async def _info(self, cid: str, caller: str, *, write: bool) -> ClassifierInfo:
        """The classifier's immutable facts, from the cache or the repository (which checks visibility)."""
        info = self._infos.get(checked_id(cid))
        if info is None:
            info = await self.repo.info(cid, caller, write=write)
            self._infos[cid] = info
            while len(self._infos) > INFO_CACHE_SIZE:
                self._infos.popitem(last=False)
        elif not info.visible_to(caller, write=write):
            raise classifier_not_found(cid)
        return info

    def _check_model(self, req_model: str | None, info: ClassifierInfo) -> None:
        if req_model is not None and self.registry.canonical(req_model) != info.model:
            raise InvalidInput(f"classifier {info.classifier_id} uses model {info.model!r}, not {req_model!r}")

    async def train(
        self, req: TrainRequest, caller: str, *, update_id: str | None = None, budget: TokenBudget | None = None,
        on_submit: Callable[[int], None] | None = None, tenant: str = "",
    ) -> TrainResult:
        """``update_id``: the client's retry key, bound to this request's :func:`train_fingerprint` (a retry of the
        same request is applied once and answers as the first time; the key with another request is refused,
        IdempotencyKeyReused; while the first is still being applied, IdempotencyKeyInUse);
        ``budget``: what the caller may spend: input tokens x num_iters, counted and admitted before any model work;
        ``on_submit(tokens)`` is called right before the update goes to the repository (where it may be applied even
        if this call is then cancelled): the moment the caller is charged."""
        items, labels, declared = self._checked_examples(req)
        distinct = list(dict.fromkeys(labels_of(labels) + declared))
        spec = await self._train_spec(req, caller, distinct)
        check_modalities(items, spec, self.registry.with_image_support())
        counted = await self.vectors.count(spec, items, budget=budget, multiplier=req.num_iters)
        X, prior = await self._embed_examples(spec, items, counted, distinct, tenant)
        batch = TrainBatch(
            X=X, y=labels, weight=req.num_iters / DEFAULT_NUM_ITERS, update_id=update_id or uuid.uuid4().hex,
            fingerprint=train_fingerprint(caller, req) if update_id else "",
            label_vectors={lab: prior[humanize(lab)] for lab in distinct},
            declared={lab: prior[humanize(lab)] for lab in declared},
            learn_from_inputs=req.learn_from_inputs,
        )
        tokens = counted.inputs * req.num_iters
        if on_submit is not None:
            on_submit(tokens)
        if req.classifier_id is None:
            new = NewClassifier(owner=caller, model=spec.name, access=req.access, dim=int(X.shape[1]), score_scale=spec.score_scale)
            outcome = await self.repo.create(new, batch)
        else:
            outcome = await self.repo.train(req.classifier_id, caller, batch)
        response = TrainingResponse(
            classifier_id=outcome.classifier_id, num_samples=outcome.num_samples, usage=Usage(total_tokens=tokens),
        )
        return TrainResult(response, outcome.replayed)

    def _checked_examples(self, req: TrainRequest) -> tuple[list[Item], list[ExampleLabels], list[str]]:
        """The request's examples (items and their labels: one, or every label that applies) and declared classes,
        checked against the limits."""
        if not 1 <= req.num_iters <= self.limits.max_num_iters:
            raise InvalidInput(f"num_iters={req.num_iters} is out of range: use 1..{self.limits.max_num_iters}")
        declared = parse_declared_labels(req.labels, max_label_chars=self.limits.max_label_chars)
        items: list[Item] = []
        labels: list[ExampleLabels] = []
        settings_only = req.classifier_id is not None and req.learn_from_inputs is not None
        # no examples: declared classes alone (a classifier that starts as zero-shot), or an update of a setting
        if not (req.input is None or (req.input == [] and (declared or settings_only))):
            items, labels = parse_training_items(
                req.input, max_items=self.limits.max_train_items, max_tokens=self.limits.max_input_tokens,
                max_label_chars=self.limits.max_label_chars,
            )
        distinct = set(labels_of(labels)) | set(declared)
        if len(distinct) > self.limits.max_classes:  # a batch alone over the limit; with known classes: the repo checks
            raise LabelLimitExceeded(
                f"Label limit exceeded: {len(distinct)} labels provided, maximum {self.limits.max_classes} allowed per classifier"
            )
        return items, labels, declared

    async def _train_spec(self, req: TrainRequest, caller: str, distinct: list[str]) -> ModelSpec:
        """The model a /train embeds with: the request's, to create a classifier; the classifier's, to update one
        (which the caller must own)."""
        if req.classifier_id is not None:
            info = await self._info(req.classifier_id, caller, write=True)
            self._check_model(req.model, info)
            return self.registry.get(info.model)
        if req.model is None:
            raise InvalidInput("/train needs `model` (to create a classifier) or `classifier_id` (to update one)")
        spec = self.registry.get(req.model)
        if len(distinct) < self.limits.min_train_labels:
            raise InvalidLabels(
                f"Invalid training labels. At least {self.limits.min_train_labels} unique labels are required "
                f"for training, got {len(distinct)}"
            )
        return spec

    async def _embed_examples(
        self, spec: ModelSpec, items: list[Item], counted: Counted, distinct: list[str], tenant: str
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """The examples' vectors and the label-name vectors (the learner's prior, and what a declared class is
        predicted from) by the model's label recipe; the label cache makes known ones free, and they are not
        charged."""
        if not items and not distinct:  # an update of a setting alone: nothing to embed
            return np.zeros((0, 0), np.float32), {}
        label_job = self.vectors.labels(spec, [humanize(lab) for lab in distinct], tenant=tenant)
        if not items:
            prior, _ = await label_job
            return np.zeros((0, len(next(iter(prior.values())))), np.float32), prior
        (prior, _), (X, _) = await asyncio.gather(label_job, self.vectors.inputs(spec, items, counted, tenant=tenant))
        return X, prior

    async def classify(
        self, req: ClassifyRequest, caller: str, *, budget: TokenBudget | None = None, tenant: str = ""
    ) -> ClassificationResponse:
        if req.labels is not None:
            raise InvalidInput("send either `labels` (zero-shot) or `classifier_id` (few-shot), not both")
        assert req.classifier_id is not None  # the ingress sends only few-shot requests here
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        info = await self._info(req.classifier_id, caller, write=False)
        self._check_model(req.model, info)
        spec = self.registry.get(info.model)
        check_modalities(items, spec, self.registry.with_image_support())
        counted = await self.vectors.count(spec, items, budget=budget)
        X, tokens = await self.vectors.inputs(spec, items, counted, tenant=tenant)
        options = req.multi_label_threshold()
        query = None if options is None else LabelQuery(options.threshold, zero_shot_threshold(spec, options))
        scores = await self.repo.classify(
            req.classifier_id, caller, X, oos_spec=spec if req.abstain else None, multi_label=query
        )
        group = GroupScores(scores.labels, scores.probs, scores.oos, scores.label_probs, scores.predicted)
        data = build_predictions({None: group}, grouped=False, abstain=req.abstain)
        return ClassificationResponse(data=data, usage=Usage(total_tokens=tokens))

    async def list(self, caller: str) -> list[ClassifierSummary]:
        return await self.repo.list(caller)

    async def delete(self, classifier_id: str, caller: str) -> DeleteResponse:
        await self.repo.delete(checked_id(classifier_id), caller)
        self._infos.pop(classifier_id, None)
        return DeleteResponse(classifier_id=classifier_id)
