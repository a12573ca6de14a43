"""The few-shot service's one view of classifier state: the :class:`ClassifierRepo` protocol and its types.

Two implementations, with the same typed methods:

* :class:`classifiers.fewshot.table.ClassifierTable` — in-process: one table of classifiers over a store. Unit tests,
  tools and single-process use; also what each Ray state shard holds.
* ``deployments.classifier_shards.ShardedRepo`` — Ray: classifiers spread over named state-shard actors by a
  hash of their id, each call one direct actor method call (no method names in strings).

Every operation is written once in the state layer (``ClassifierTable``) and once here.
"""
from __future__ import annotations

import builtins
import uuid
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.protocol.wire import ClassifierSummary
from classifiers.request.inputs import ExampleLabels


@dataclass(frozen=True)
class TrainBatch:
    """One /train request's examples, embedded: what an update adds to a classifier's statistics."""

    X: np.ndarray  # (n, dim) float32, rows L2-normalised
    y: list[ExampleLabels]  # normalised labels per row: one, or (multi-label) every label that applies
    weight: float  # num_iters / 10
    label_vectors: dict[str, np.ndarray] = field(default_factory=dict)  # label-name embeddings (the prior)
    update_id: str = ""  # a retry with the same id is applied once (a create's id derives from it: see id_for_create)
    declared: dict[str, np.ndarray] = field(default_factory=dict)  # classes to know without examples: label vectors
    # What the update id was first used for (classifiers.fewshot.service.train_fingerprint): a later batch under the same id
    # but another fingerprint is a different request reusing the key, refused (IdempotencyKeyReused), never a
    # replay. "" (a caller without one) matches anything, as before fingerprints.
    fingerprint: str = ""
    # Ours: turn learning from the owner's classified inputs on or off (None: as it is; a create: off).
    learn_from_inputs: bool | None = None


@dataclass(frozen=True)
class NewClassifier:
    """What a create needs besides its first batch."""

    owner: str
    model: str
    access: str
    dim: int
    score_scale: float


@dataclass(frozen=True)
class TrainOutcome:
    classifier_id: str
    num_samples: int  # examples this request added
    total_samples: int
    labels: list[str]
    replayed: bool = False  # this update id was applied before: nothing changed now (an idempotent retry)


@dataclass(frozen=True)
class ClassifierInfo:
    """The facts of a classifier that never change after its create (safe to cache by id)."""

    classifier_id: str
    model: str
    owner: str
    access: str

    def visible_to(self, caller: str, *, write: bool) -> bool:
        """`private`: only the owner. `public`: anyone may classify; only the owner may update or delete."""
        return self.owner == caller or (not write and self.access == "public")


@dataclass(frozen=True)
class LabelQuery:
    """A multi-label classify: the request's threshold on each label's own probability (None: the classifier's
    learned per-label thresholds), and the threshold for a classifier that has learned none yet (declared labels
    only: the model's zero-shot rule)."""

    threshold: float | None
    fallback: float


@dataclass(frozen=True)
class Scores:
    """A classifier's probabilities for a batch of inputs: (n, len(labels)); (n,) out-of-scope scores if asked;
    in multi-label mode each label's own probability and which labels apply."""

    labels: list[str]
    probs: np.ndarray
    oos: np.ndarray | None = None
    label_probs: np.ndarray | None = None
    predicted: np.ndarray | None = None


@runtime_checkable
class ClassifierRepo(Protocol):
    async def create(self, new: NewClassifier, batch: TrainBatch) -> TrainOutcome:
        """A new classifier from its first batch, counted against its owner's limit (ResourceLimitExceeded)
        atomically: when this returns or fails, the classifier is complete and listed, or nothing exists."""

    async def train(self, classifier_id: str, caller: str, batch: TrainBatch) -> TrainOutcome:
        """Add a batch to the caller's classifier (ResourceNotFound if it is not theirs)."""

    async def info(self, classifier_id: str, caller: str, *, write: bool) -> ClassifierInfo: ...

    async def classify(
        self, classifier_id: str, caller: str, X: np.ndarray, *, oos_spec: ModelSpec | None = None,
        multi_label: LabelQuery | None = None,
    ) -> Scores:
        """Probabilities; with ``oos_spec`` (the classifier's model) also out-of-scope scores (classifiers/zeroshot/oos.py);
        with ``multi_label``, each label's own probability and the labels that apply."""

    async def list(self, owner: str) -> list[ClassifierSummary]:
        """The owner's classifiers, oldest first."""

    async def delete(self, classifier_id: str, caller: str) -> None: ...

    async def stats(self) -> builtins.list[dict]:  # builtins: `list` here is the method above
        """Per-table (per-shard) statistics: loaded classifiers, memory."""


def id_for_create(owner: str, update_id: str, attempt: int = 0) -> str:
    """The classifier id a create with this update id makes: a retried create (same Idempotency-Key, same owner)
    names the same classifier and finds it already made, instead of making a second one."""
    return str(uuid.uuid5(_CREATE_NAMESPACE, f"{owner}\x00{update_id}\x00{attempt}"))


_CREATE_NAMESPACE = uuid.UUID("6f1c4a52-3f7e-4d5b-9a43-1d2b7e0c9a10")
