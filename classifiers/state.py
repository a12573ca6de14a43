"""Few-shot classifier state: records, access rules, serialised updates, persistence. No Ray imports.

A :class:`ClassifierBook` holds the classifiers of one state shard (the Ray actor in
``deployments/classifier_state.py`` is a thin wrapper around it). Rules it enforces:

* An update is applied to a copy of the learner, persisted (write-through, atomic), and only then swapped in:
  a failed limit check, a store error or a crash never leaves a half-applied classifier, in memory or on disk.
* Updates to one classifier are serialised by a per-classifier lock; classify reads the current predictor
  object without locking, so reads never wait on other classifiers (nor on a slow write of the same one).
* In memory a classifier is only its compiled linear predictor (D x K, ~50 KB at 384-d and 16 classes) and
  metadata; the sufficient statistics (~0.6 MB) are read from the store when an update needs them.
* ``private`` classifiers exist only for their owner (others get RESOURCE_NOT_FOUND); ``public`` ones can be
  used for classification by anyone with the id, but read, updated, listed or deleted only by the owner.
* Each update carries an id; a retried update (e.g. after the actor died between persisting and answering)
  is recognised and not applied twice.
"""
from __future__ import annotations

import asyncio
import io
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from classifiers.errors import LabelLimitExceeded, ResourceLimitExceeded, ResourceNotFound
from classifiers.fewshot import FewShotLearner, LinearPredictor
from classifiers.limits import Limits
from classifiers.store import StateStore

RECENT_UPDATES = 64
STALE_RESERVATION_S = 600.0  # a create takes seconds; a reservation this old without its classifier is a crash
FORMAT_VERSION = 1


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
    used_number: int = 0
    used_at: float | None = None
    predictor: LinearPredictor | None = None
    state_bytes: int = 0

    def compiled(self) -> "ClassifierRecord":
        """Compile the predictor and drop the statistics: what a shard keeps in memory."""
        if self.learner is not None:
            self.predictor = self.learner.compile()
            self.state_bytes = self.learner.state_nbytes()
            self.learner = None
        return self

    @property
    def labels(self) -> list[str]:
        return list(self.learner.labels if self.learner is not None else self.predictor.labels)

    def to_bytes(self) -> bytes:
        state = self.learner.to_state()
        arrays = {f"learner.{k}": v for k, v in state.items() if isinstance(v, np.ndarray)}
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
            "learner": scalars,
        }
        buf = io.BytesIO()
        np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "ClassifierRecord":
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            state = {**meta["learner"], **{k[len("learner.") :]: z[k] for k in z.files if k.startswith("learner.")}}
        return cls(
            classifier_id=meta["classifier_id"],
            owner=meta["owner"],
            model=meta["model"],
            access=meta["access"],
            learner=FewShotLearner.from_state(state),
            created_at=meta["created_at"],
            updated_at=meta["updated_at"],
            updated_number=meta["updated_number"],
            num_samples=meta["num_samples"],
            recent_updates=dict(meta["recent_updates"]),
        )

    def summary(self) -> dict:
        iso = lambda t: datetime.fromtimestamp(t, timezone.utc).isoformat() if t is not None else None  # noqa: E731
        return {
            "classifier_id": self.classifier_id,
            "user_id": self.owner,
            "model": self.model,
            "labels": self.labels,
            "access": self.access,
            "num_samples": self.num_samples,
            "updated_number": self.updated_number,
            "used_number": self.used_number,
            "created_at": iso(self.created_at),
            "updated_at": iso(self.updated_at),
            "used_at": iso(self.used_at),
            "is_active": True,
            "is_latest": True,
            "metadata_": {"state_bytes": self.state_bytes},
        }


@dataclass(frozen=True)
class ClassifierInfo:
    model: str
    labels: list[str]
    access: str
    owner: str


@dataclass(frozen=True)
class TrainOutcome:
    classifier_id: str
    num_samples: int  # examples this request added
    total_samples: int
    labels: list[str]


class ClassifierBook:
    def __init__(self, store: StateStore, limits: Limits, *, capacity: int = 2000, clock=time.time):
        self.store = store
        self.limits = limits
        self.capacity = capacity
        self._clock = clock
        self._loaded: OrderedDict[str, ClassifierRecord] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner_locks: dict[str, asyncio.Lock] = {}
        self._dirty_usage: set[str] = set()

    # -- loading --------------------------------------------------------------------------------------------
    def _lock(self, table: dict[str, asyncio.Lock], key: str) -> asyncio.Lock:
        lock = table.get(key)
        if lock is None:
            lock = table[key] = asyncio.Lock()
        return lock

    def _get(self, cid: str) -> ClassifierRecord | None:
        rec = self._loaded.get(cid)
        if rec is not None:
            self._loaded.move_to_end(cid)
            return rec
        blob = self.store.load_classifier(cid)
        if blob is None:
            return None
        rec = ClassifierRecord.from_bytes(blob).compiled()
        usage = self.store.read(f"usage/{cid}.json")
        if usage:
            u = json.loads(usage)
            rec.used_number, rec.used_at = u["used_number"], u["used_at"]
        self._remember(rec)
        return rec

    def _remember(self, rec: ClassifierRecord) -> None:
        self._loaded[rec.classifier_id] = rec.compiled()
        self._loaded.move_to_end(rec.classifier_id)
        while len(self._loaded) > self.capacity:
            old_id = next(iter(self._loaded))
            self._flush_usage(old_id)
            del self._loaded[old_id]  # evicted state reloads from the store on the next use

    def _visible(self, cid: str, caller: str, *, write: bool) -> ClassifierRecord:
        rec = self._get(cid)
        if rec is None or (rec.owner != caller and (write or rec.access != "public")):
            raise ResourceNotFound(f"Classifier '{cid}' not found or access denied. Verify the ID and your permissions.")
        return rec

    # -- owners ---------------------------------------------------------------------------------------------
    async def reserve(self, owner: str, cid: str) -> None:
        """Count a new classifier against its owner's limit (call on the owner's shard before creating).
        Idempotent: a retried reservation of the same id is not counted twice."""
        async with self._lock(self._owner_locks, owner):
            owned = self.store.owned(owner)
            if cid in owned:
                return
            if len(owned) >= self.limits.max_classifiers_per_owner:
                raise ResourceLimitExceeded(
                    f"Resource limit exceeded. Current: {len(owned)} classifiers, limit: "
                    f"{self.limits.max_classifiers_per_owner}. Delete existing classifiers first."
                )
            self.store.add_owned(owner, cid, self._clock())

    async def release(self, owner: str, cid: str) -> None:
        async with self._lock(self._owner_locks, owner):
            self.store.remove_owned(owner, cid)

    async def release_stale(self, owner: str, cid: str, older_than_s: float = STALE_RESERVATION_S) -> None:
        """Drop a reservation whose create never finished, but never one that may still be in flight."""
        async with self._lock(self._owner_locks, owner):
            since = self.store.owned_since(owner, cid)
            if since is not None and self._clock() - since > older_than_s and self.store.load_classifier(cid) is None:
                self.store.remove_owned(owner, cid)

    async def owned(self, owner: str) -> list[str]:
        return self.store.owned(owner)

    # -- training -------------------------------------------------------------------------------------------
    async def create(
        self, cid: str, owner: str, model: str, access: str, *, dim: int, score_scale: float,
        X: np.ndarray, y: list[str], weight: float, label_vectors: dict[str, np.ndarray], update_id: str,
    ) -> TrainOutcome:
        async with self._lock(self._locks, cid):
            if self._get(cid) is not None:
                rec = self._loaded[cid]
                if update_id in rec.recent_updates and rec.owner == owner:
                    return self._outcome(rec, rec.recent_updates[update_id])
                raise ResourceLimitExceeded(f"classifier id {cid} already exists")
            self._check_classes(set(y), set())
            now = self._clock()
            learner = FewShotLearner(dim, score_scale=score_scale)
            learner.update(X, y, weight=weight, label_vectors=label_vectors)
            rec = ClassifierRecord(
                classifier_id=cid, owner=owner, model=model, access=access, learner=learner,
                created_at=now, updated_at=now, updated_number=0, num_samples=len(y),
                recent_updates={update_id: len(y)},
            )
            await asyncio.to_thread(self.store.save_classifier, cid, rec.to_bytes())  # off the event loop
            self._remember(rec)
            return self._outcome(rec, len(y))

    async def train(
        self, cid: str, caller: str, *, X: np.ndarray, y: list[str], weight: float,
        label_vectors: dict[str, np.ndarray], update_id: str,
    ) -> TrainOutcome:
        self._visible(cid, caller, write=True)  # unknown ids fail here, before a lock is made for them
        async with self._lock(self._locks, cid):
            rec = self._visible(cid, caller, write=True)
            if update_id in rec.recent_updates:
                return self._outcome(rec, rec.recent_updates[update_id])
            self._check_classes(set(y), set(rec.labels))
            # The statistics come from the store (the in-memory record holds only the predictor); this fresh
            # copy is updated, persisted, and only then swapped in: no partial update, ever.
            learner = ClassifierRecord.from_bytes(self.store.load_classifier(cid)).learner
            learner.update(X, y, weight=weight, label_vectors=label_vectors)
            recent = dict(list(rec.recent_updates.items())[-(RECENT_UPDATES - 1) :])
            recent[update_id] = len(y)
            new = ClassifierRecord(
                classifier_id=cid, owner=rec.owner, model=rec.model, access=rec.access, learner=learner,
                created_at=rec.created_at, updated_at=self._clock(), updated_number=rec.updated_number + 1,
                num_samples=rec.num_samples + len(y), recent_updates=recent,
                used_number=rec.used_number, used_at=rec.used_at,
            )
            # Durable before it is visible or acknowledged; written off the event loop so that calls for other
            # classifiers on this shard are not held up by fsync / an object-store PUT.
            await asyncio.to_thread(self.store.save_classifier, cid, new.to_bytes())
            self._remember(new)
            return self._outcome(new, len(y))

    def _check_classes(self, new: set[str], known: set[str]) -> None:
        total = len(known | new)
        if total > self.limits.max_classes:
            raise LabelLimitExceeded(
                f"Label limit exceeded: {total} labels provided, maximum {self.limits.max_classes} allowed per classifier"
            )

    @staticmethod
    def _outcome(rec: ClassifierRecord, added: int) -> TrainOutcome:
        return TrainOutcome(rec.classifier_id, added, rec.num_samples, rec.labels)

    # -- reading --------------------------------------------------------------------------------------------
    async def info(self, cid: str, caller: str, write: bool) -> ClassifierInfo:
        rec = self._visible(cid, caller, write=write)
        return ClassifierInfo(rec.model, rec.labels, rec.access, rec.owner)

    async def classify(self, cid: str, caller: str, X: np.ndarray) -> tuple[list[str], np.ndarray]:
        rec = self._visible(cid, caller, write=False)
        predictor = rec.predictor  # one reference: a concurrent update swaps the record, never mutates this
        probs = predictor.predict_proba(X)
        rec.used_number += 1
        rec.used_at = self._clock()
        self._dirty_usage.add(cid)
        return list(predictor.labels), probs

    async def summary(self, cid: str, caller: str) -> dict | None:
        try:
            return self._visible(cid, caller, write=True).summary()
        except ResourceNotFound:
            return None

    async def delete(self, cid: str, caller: str) -> None:
        self._visible(cid, caller, write=True)
        async with self._lock(self._locks, cid):
            self._visible(cid, caller, write=True)
            await asyncio.to_thread(self.store.delete_classifier, cid)
            self._loaded.pop(cid, None)
            self._dirty_usage.discard(cid)
        self._locks.pop(cid, None)

    # -- usage counters -------------------------------------------------------------------------------------
    def _flush_usage(self, cid: str) -> None:
        rec = self._loaded.get(cid)
        if cid in self._dirty_usage and rec is not None:
            self.store.write(f"usage/{cid}.json", json.dumps({"used_number": rec.used_number, "used_at": rec.used_at}).encode())
        self._dirty_usage.discard(cid)

    def flush_usage(self) -> int:
        dirty = list(self._dirty_usage)
        for cid in dirty:
            self._flush_usage(cid)
        return len(dirty)

    def stats(self) -> dict:
        return {
            "loaded": len(self._loaded),
            "capacity": self.capacity,
            "stored_state_bytes": int(sum(r.state_bytes for r in self._loaded.values())),
            "memory_bytes": int(sum(r.predictor.nbytes for r in self._loaded.values())),
        }


class LocalShard:
    """One in-process shard with the same `call(key, method, ...)` shape as the router's Ray ShardClient."""

    def __init__(self, book: ClassifierBook):
        self.book = book

    async def call(self, key: str, method: str, *args, **kwargs):
        return await getattr(self.book, method)(*args, **kwargs)
