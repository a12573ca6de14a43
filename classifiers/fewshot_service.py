"""Few-shot endpoints' logic: /train (create, update), /classify by classifier_id, list, delete. No Ray imports.

The classifiers themselves are reached through :class:`Classifiers` over a shard caller: the router's Ray
state shards, or (tests, single process) a :class:`~classifiers.state.LocalShard` around one ClassifierBook.
Everything a client can get wrong is checked here before any model work, and checked again under the
classifier's lock on the shard where a concurrent request could have changed the answer (class limit).
"""
from __future__ import annotations

import asyncio
import re
import uuid
from typing import Protocol

import numpy as np

from classifiers.api import ClassificationResponse, ClassifyRequest, TrainingResponse, TrainRequest, Usage
from classifiers.errors import InvalidInput, InvalidLabels, LabelLimitExceeded, ResourceNotFound
from classifiers.inputs import check_modalities, parse_inputs, parse_training_items
from classifiers.state import ClassifierInfo, TrainOutcome
from classifiers.zeroshot import build_predictions

DEFAULT_NUM_ITERS = 10  # Jina's default; a batch's weight is num_iters / DEFAULT_NUM_ITERS
# Ids this service issues are UUIDs; anything outside this shape cannot exist and never reaches a store path.
CLASSIFIER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def checked_id(cid: str) -> str:
    if not CLASSIFIER_ID.fullmatch(cid):
        raise ResourceNotFound(f"Classifier {cid[:80]!r} not found or access denied. Verify the ID and your permissions.")
    return cid


class ShardCaller(Protocol):
    async def call(self, key: str, method: str, *args, **kwargs): ...


class Classifiers:
    """Routes each operation to the state shard that owns it: owner operations by owner, the rest by id.

    `shards` is the router's Ray ShardClient, or a LocalShard around one ClassifierBook in tests."""

    def __init__(self, shards: ShardCaller):
        self.shards = shards

    async def reserve(self, owner: str, cid: str) -> None:
        await self.shards.call(owner, "reserve", owner, cid)

    async def release(self, owner: str, cid: str) -> None:
        await self.shards.call(owner, "release", owner, cid)

    async def owned(self, owner: str) -> list[str]:
        return await self.shards.call(owner, "owned", owner)

    async def release_stale(self, owner: str, cid: str) -> None:
        await self.shards.call(owner, "release_stale", owner, cid)

    async def create(self, cid: str, owner: str, model: str, access: str, **kw) -> TrainOutcome:
        return await self.shards.call(cid, "create", cid, owner, model, access, **kw)

    async def train(self, cid: str, caller: str, **kw) -> TrainOutcome:
        return await self.shards.call(cid, "train", checked_id(cid), caller, **kw)

    async def info(self, cid: str, caller: str, write: bool) -> ClassifierInfo:
        return await self.shards.call(cid, "info", checked_id(cid), caller, write)

    async def classify(self, cid: str, caller: str, X: np.ndarray) -> tuple[list[str], np.ndarray]:
        return await self.shards.call(cid, "classify", checked_id(cid), caller, X)

    async def summary(self, cid: str, caller: str) -> dict | None:
        return await self.shards.call(cid, "summary", checked_id(cid), caller)

    async def delete(self, cid: str, caller: str) -> None:
        await self.shards.call(cid, "delete", checked_id(cid), caller)


def humanize(label: str) -> str:
    """`book_flight` -> `book flight`: the label-name prior embeds words, not identifiers."""
    return " ".join(label.replace("_", " ").replace("-", " ").split()) or label


class FewShotMixin:
    """Few-shot methods of ClassificationService (needs .registry, .limits, .embed_items, .label_vectors)."""

    classifiers: Classifiers | None

    def _backend(self) -> Classifiers:
        if self.classifiers is None:
            raise InvalidInput("few-shot classifiers are not enabled in this deployment")
        return self.classifiers

    async def train(self, req: TrainRequest, caller: str, *, update_id: str | None = None) -> TrainingResponse:
        backend = self._backend()
        if not 1 <= req.num_iters <= self.limits.max_num_iters:
            raise InvalidInput(f"num_iters={req.num_iters} is out of range: use 1..{self.limits.max_num_iters}")
        items, labels = parse_training_items(req.input, max_items=self.limits.max_train_items, max_tokens=self.limits.max_input_tokens)
        distinct = list(dict.fromkeys(labels))
        weight = req.num_iters / DEFAULT_NUM_ITERS
        update_id = update_id or uuid.uuid4().hex
        if req.classifier_id is None:
            if req.model is None:
                raise InvalidInput("/train needs `model` (to create a classifier) or `classifier_id` (to update one)")
            spec = self.registry.get(req.model)
            if len(distinct) < self.limits.min_train_labels:
                raise InvalidLabels(
                    f"Invalid training labels. At least {self.limits.min_train_labels} unique labels are required "
                    f"for training, got {len(distinct)}"
                )
            known: list[str] = []
        else:
            info = await backend.info(req.classifier_id, caller, write=True)
            if req.model is not None and self.registry.canonical(req.model) != info.model:
                raise InvalidInput(f"classifier {req.classifier_id} uses model {info.model!r}, not {req.model!r}")
            spec = self.registry.get(info.model)
            known = info.labels
        total = len(set(known) | set(distinct))
        if total > self.limits.max_classes:
            raise LabelLimitExceeded(
                f"Label limit exceeded: {total} labels provided, maximum {self.limits.max_classes} allowed per classifier"
            )
        check_modalities(items, spec, self.registry.with_image_support())
        new_labels = [lab for lab in distinct if lab not in known]
        (X, tokens), (prior, _) = await asyncio.gather(
            self.embed_items(spec, items), self.label_vectors(spec, [humanize(lab) for lab in new_labels])
        )
        label_vectors = {lab: prior[humanize(lab)] for lab in new_labels}
        common = dict(X=X, y=labels, weight=weight, label_vectors=label_vectors, update_id=update_id)
        if req.classifier_id is None:
            cid = str(uuid.uuid4())
            await backend.reserve(caller, cid)
            try:
                outcome = await backend.create(
                    cid, caller, spec.name, req.access, dim=int(X.shape[1]), score_scale=spec.score_scale, **common
                )
            except BaseException:
                await backend.release(caller, cid)
                raise
        else:
            outcome = await backend.train(req.classifier_id, caller, **common)
        return TrainingResponse(
            classifier_id=outcome.classifier_id, num_samples=outcome.num_samples,
            usage=Usage(total_tokens=tokens * req.num_iters),
        )

    async def classify_fewshot(self, req: ClassifyRequest, caller: str) -> ClassificationResponse:
        backend = self._backend()
        if req.labels is not None:
            raise InvalidInput("send either `labels` (zero-shot) or `classifier_id` (few-shot), not both")
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        info = await backend.info(req.classifier_id, caller, write=False)
        if req.model is not None and self.registry.canonical(req.model) != info.model:
            raise InvalidInput(f"classifier {req.classifier_id} uses model {info.model!r}, not {req.model!r}")
        spec = self.registry.get(info.model)
        check_modalities(items, spec, self.registry.with_image_support())
        X, tokens = await self.embed_items(spec, items)
        labels, probs = await backend.classify(req.classifier_id, caller, X)
        data = build_predictions({None: (labels, probs)}, grouped=False)
        return ClassificationResponse(data=data, usage=Usage(total_tokens=tokens))

    async def list_classifiers(self, caller: str) -> list[dict]:
        backend = self._backend()
        ids = await backend.owned(caller)
        summaries = await asyncio.gather(*(backend.summary(cid, caller) for cid in ids))
        for cid, s in zip(ids, summaries):
            if s is None:  # reserved, not (yet) created: a create in flight, or one that crashed long ago
                await backend.release_stale(caller, cid)
        return sorted((s for s in summaries if s is not None), key=lambda s: s["created_at"])

    async def delete_classifier(self, cid: str, caller: str) -> dict:
        backend = self._backend()
        await backend.delete(cid, caller)
        await backend.release(caller, cid)
        return {"classifier_id": cid, "deleted": True}
