"""A stored few-shot classifier: its metadata and learner, and the byte format it is persisted in. No Ray.

One record per classifier, written whole (``to_bytes``: an ``.npz`` of the learner's arrays and a JSON meta) by the
table's fenced writes and read back by ``from_bytes``; optional meta fields are added without a format bump (an
older reader ignores them), a layout change bumps ``FORMAT_VERSION`` and an older reader refuses the record.
"""
from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np

from classifiers.fewshot.learner import FewShotLearner
from classifiers.fewshot.predictor import LinearPredictor
from classifiers.fewshot.repository import ClassifierInfo
from classifiers.protocol.wire import ClassifierSummary
from classifiers.storage.store import ANONYMOUS_OWNER, StateStore

FORMAT_VERSION = 2  # 2: owners are account UUIDs (1 wrote the anonymous owner as "anonymous")
_LEGACY_OWNERS = {"anonymous": ANONYMOUS_OWNER}


class UnsupportedStateFormat(RuntimeError):
    """A stored classifier written by a newer version of this service: never guess at its layout."""


@dataclass
class ClassifierRecord:
    """A classifier's metadata with its learner (when loaded for an update) or just its compiled predictor."""

    classifier_id: str
    owner: str
    model: str
    access: str
    learner: FewShotLearner | None
    created_at: float
    updated_at: float
    updated_number: int = 0
    num_samples: int = 0
    recent_updates: dict[str, int] = field(default_factory=dict)  # update id -> num_samples it added
    fingerprints: dict[str, str] = field(default_factory=dict)  # update id -> its request's fingerprint (if any)
    created_by: dict | None = None  # the create's {"update_id", "fingerprint", "num_samples"}: kept for good
    used_number: int = 0
    used_at: float | None = None
    predictor: LinearPredictor | None = None
    state_bytes: int = 0
    learn_from_inputs: bool = False  # the owner's classified inputs feed it (classifiers/fewshot/input_learning.py)
    inputs_learned: int = 0  # the learner's count, kept when the statistics are dropped

    @property
    def info(self) -> ClassifierInfo:
        return ClassifierInfo(self.classifier_id, self.model, self.owner, self.access)

    def compiled(self) -> "ClassifierRecord":
        """Compile the predictor and drop the statistics: what a table keeps in memory."""
        if self.learner is not None:
            self.predictor = self.learner.compile()
            self.state_bytes = self.learner.state_nbytes()
            self.inputs_learned = self.learner.inputs_learned
            self.learner = None
        return self

    @property
    def labels(self) -> list[str]:
        if self.learner is not None:
            return list(self.learner.labels)
        assert self.predictor is not None  # a record holds its learner or its compiled predictor
        return list(self.predictor.labels)

    def to_bytes(self) -> bytes:
        assert self.learner is not None, "only a record with its learner (the statistics) is stored"
        state = self.learner.to_state()
        arrays: dict[str, Any] = {f"learner.{k}": v for k, v in state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in state.items() if not isinstance(v, np.ndarray)}
        meta = {
            "format": FORMAT_VERSION,
            "classifier_id": self.classifier_id,
            "owner": self.owner,
            "model": self.model,
            "access": self.access,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "updated_number": self.updated_number,
            "num_samples": self.num_samples,
            "recent_updates": self.recent_updates,
            # Optional fields (a reader that predates them ignores them, and replays by id alone, as it did):
            "recent_fingerprints": self.fingerprints,
            "created_by": self.created_by,
            "learn_from_inputs": self.learn_from_inputs,
            "learner": scalars,
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClassifierRecord":
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            version = meta.get("format", 1)
            if version > FORMAT_VERSION:
                raise UnsupportedStateFormat(
                    f"classifier {meta.get('classifier_id')!r} was stored in state format {version}; this version "
                    f"reads formats up to {FORMAT_VERSION}: upgrade the service"
                )
            state = {**meta["learner"], **{k[len("learner.") :]: z[k] for k in z.files if k.startswith("learner.")}}
        owner = meta["owner"] if version >= 2 else _LEGACY_OWNERS.get(meta["owner"], meta["owner"])
        return cls(
            classifier_id=meta["classifier_id"],
            owner=owner,
            model=meta["model"],
            access=meta["access"],
            learner=FewShotLearner.from_state(state),
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            updated_number=meta["updated_number"],
            num_samples=meta["num_samples"],
            recent_updates=dict(meta["recent_updates"]),
            fingerprints=dict(meta.get("recent_fingerprints") or {}),
            created_by=meta.get("created_by"),
            learn_from_inputs=bool(meta.get("learn_from_inputs", False)),
        )

    def applied(self, update_id: str) -> tuple[int, str] | None:
        """(num_samples, fingerprint) of an update id this classifier applied and still remembers, else None."""
        if not update_id:
            return None
        if update_id in self.recent_updates:
            return self.recent_updates[update_id], self.fingerprints.get(update_id, "")
        if self.created_by is not None and self.created_by["update_id"] == update_id:
            return self.created_by["num_samples"], self.created_by["fingerprint"]
        return None

    def summary(self) -> ClassifierSummary:
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat() if t is not None else None  # noqa: E731
        return ClassifierSummary(
            classifier_id=self.classifier_id,
            user_id=self.owner,
            model=self.model,
            labels=self.labels,
            access=self.access,
            num_samples=self.num_samples,
            updated_number=self.updated_number,
            used_number=self.used_number,
            created_at=iso(self.created_at),
            updated_at=iso(self.updated_at),
            used_at=iso(self.used_at),
            learn_from_inputs=self.learn_from_inputs,
            inputs_learned=self.inputs_learned,
            metadata_={"state_bytes": self.state_bytes},
        )


async def migrate_legacy_owners(store: StateStore) -> int:
    """Move owner-index markers written under format 1's owner names to the owners' UUIDs (idempotent; run
    when a deploy claims the store). Records themselves are read with the new owner and rewritten on update."""
    moved = 0
    for legacy, owner in _LEGACY_OWNERS.items():
        for cid in await store.owned(legacy):
            await store.add_owned(owner, cid, await store.owned_since(legacy, cid) or time.time())
            await store.remove_owned(legacy, cid)
            moved += 1
    return moved
