"""Few-shot classifier state in one process: records, access rules, serialised updates, persistence. No Ray.

:class:`ClassifierTable` is the in-process :class:`~classifiers.fewshot.repository.ClassifierRepo`: unit tests and
single-process tools use it directly, and each Ray state shard (``deployments/classifier_shards.py``) is a
thin actor around one. Rules it enforces:

* An update is applied to a copy of the learner, persisted (write-through, atomic), and only then swapped in:
  a failed limit check, a store error or a crash never leaves a half-applied classifier, in memory or on disk.
* A create reserves its owner's quota and writes the classifier as one shielded step: a caller that gives up
  (a client disconnect cancels it) leaves either a complete, listed classifier or nothing.
* Updates to one classifier are serialised by a per-classifier lock; classify reads the current predictor
  object without locking, so reads never wait on other classifiers (nor on a slow write of the same one).
  All store I/O is async (``StateStore``'s own threads): a slow store delays only the calls that need it.
* In memory a classifier is only its compiled linear predictor (D x K, ~50 KB at 384-d and 16 classes) and
  metadata; the sufficient statistics (~0.6 MB) are read from the store when an update needs them.
* ``private`` classifiers exist only for their owner (others get RESOURCE_NOT_FOUND); ``public`` ones can be
  used for classification by anyone with the id, but updated, listed or deleted only by the owner.
* Each update carries an id; a retried update (e.g. after the actor died between persisting and answering)
  is recognised and not applied twice. The id is remembered with the fingerprint of the request it came with
  (a client's Idempotency-Key and its body): the same id with another fingerprint is refused
  (IdempotencyKeyReused, nothing applied), and the same id arriving while its first request is still being
  applied here is refused too (IdempotencyKeyInUse). A classifier remembers its last ``RECENT_UPDATES`` ids, in
  its stored record (so across restarts), and the id of its create for as long as it exists.
* Once the store's fence names another writer (a newer deploy took over), every call raises StaleWriter, reads
  included: a replaced table never serves predictions the current one may have updated.
* ``learn_from_inputs``: the inputs of the owner's classify calls wait, after their answer was computed, in
  bounded memory (:class:`~classifiers.fewshot.input_learning.PendingInputs`) and are folded in a chunk at a
  time by a background step that takes the same per-classifier lock and fenced write as a /train; a failed step
  is logged and its chunk dropped, never surfaced to a classify and never in the way of a train.
"""
from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import logging
import time
import uuid
from collections import OrderedDict
from typing import Callable

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.fewshot.input_learning import InputLearningConfig, PendingInputs
from classifiers.fewshot.learner import FewShotLearner
from classifiers.fewshot.learner_config import LearnerConfig
from classifiers.fewshot.record import ClassifierRecord
from classifiers.fewshot.repository import (
    ClassifierInfo,
    LabelQuery,
    NewClassifier,
    Scores,
    TrainBatch,
    TrainOutcome,
    id_for_create,
)
from classifiers.protocol.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    InvalidInput,
    LabelLimitExceeded,
    ResourceLimitExceeded,
    StaleWriter,
    classifier_not_found,
)
from classifiers.protocol.wire import ClassifierSummary
from classifiers.request.inputs import labels_of
from classifiers.request.limits import Limits
from classifiers.storage.store import StateStore
from classifiers.zeroshot.oos import fewshot_oos_score
from classifiers.zeroshot.scoring import softmax

logger = logging.getLogger(__name__)

RECENT_UPDATES = 64
STALE_RESERVATION_S = 600.0  # a create takes seconds; a reservation this old without its classifier is a crash
async def _apply(learner: FewShotLearner, batch: TrainBatch) -> None:
    """Declared classes first (they may be all a batch has), then the examples.

    Off the event loop: a large update is several D x D solves (docs/fewshot.md), and other classifiers' classify
    calls on the same shard must not wait for it. ``learner`` is the caller's own copy, under its lock."""

    def apply() -> None:
        if batch.declared:
            learner.declare(batch.declared)
        if len(batch.y):
            learner.update(batch.X, batch.y, weight=batch.weight, label_vectors=batch.label_vectors)

    await asyncio.to_thread(apply)


class ClassifierTable:
    """The classifiers one process serves, over a :class:`StateStore`: the in-process ClassifierRepo.

    ``owns(classifier_id)`` says whether this table is the one that serves (and caches) a classifier; a Ray
    shard owns the ids that hash to it. Listing an owner's classifiers that another table owns reads them from
    the store instead of caching them here.
    """

    def __init__(
        self, store: StateStore, limits: Limits, *, capacity: int = 2000, clock: Callable[[], float] = time.time,
        owns: Callable[[str], bool] = lambda cid: True, learning: InputLearningConfig | None = None,
    ):
        self.store = store
        self.limits = limits
        self.capacity = capacity
        self._clock = clock
        self._owns = owns
        self._learner_config = LearnerConfig(max_classes=limits.max_classes)
        self._loaded: OrderedDict[str, ClassifierRecord] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner_locks: dict[str, asyncio.Lock] = {}
        self._dirty_usage: set[str] = set()
        self._evicted_usage: dict[str, dict] = {}  # counters of evicted classifiers, written by the next flush
        self._stale: StaleWriter | None = None
        # (classifier id, update id) of creates and updates being applied now. This table is the only writer of
        # its classifiers, so this set is authoritative: a second request with the same key meanwhile is a 409.
        self._inflight: set[tuple[str, str]] = set()
        self._pending = PendingInputs(learning or InputLearningConfig())
        self._learning: dict[str, asyncio.Task] = {}  # classifier id -> the task that learns its waiting inputs
        self._wake: dict[str, asyncio.Event] = {}  # set when a classifier's waiting inputs make a full chunk
        self.learning_stats = {"inputs_learned": 0, "steps": 0, "failed_steps": 0}

    # -- loading --------------------------------------------------------------------------------------------
    @staticmethod
    def _lock(table: dict[str, asyncio.Lock], key: str) -> asyncio.Lock:
        lock = table.get(key)
        if lock is None:
            lock = table[key] = asyncio.Lock()
        return lock

    def _check_current(self) -> None:
        if self._stale is not None:
            raise self._stale

    def fence_lost(self, error: StaleWriter) -> None:
        """Stop serving: another shard set owns the store now (its updates are invisible to this table)."""
        self._stale = error
        self._loaded.clear()
        for cid in list(self._learning):
            self._pending.drop(cid)

    async def _load(self, cid: str) -> ClassifierRecord | None:
        """A classifier's full record (statistics included) from the store, without its use counters."""
        blob = await self.store.load_classifier(cid)
        return None if blob is None else ClassifierRecord.from_bytes(blob)

    async def _read(self, cid: str) -> ClassifierRecord | None:
        """A classifier's full record from the store, with its latest use counters."""
        rec = await self._load(cid)
        if rec is None:
            return None
        usage = self._evicted_usage.get(cid) or await self.store.read_usage(cid)
        if usage:
            rec.used_number, rec.used_at = usage["used_number"], usage["used_at"]
        return rec

    async def _get(self, cid: str) -> ClassifierRecord | None:
        self._check_current()
        rec = self._loaded.get(cid)
        if rec is not None:
            self._loaded.move_to_end(cid)
            return rec
        rec = await self._read(cid)
        if rec is None:
            return None
        self._check_current()
        self._remember(rec)
        return self._loaded[cid]

    def _remember(self, rec: ClassifierRecord) -> None:
        self._loaded[rec.classifier_id] = rec.compiled()
        self._loaded.move_to_end(rec.classifier_id)
        while len(self._loaded) > self.capacity:
            old_id, old = self._loaded.popitem(last=False)  # evicted state reloads from the store on next use
            if old_id in self._dirty_usage:
                self._dirty_usage.discard(old_id)
                self._evicted_usage[old_id] = {"used_number": old.used_number, "used_at": old.used_at}

    async def _visible(self, cid: str, caller: str, *, write: bool) -> ClassifierRecord:
        rec = await self._get(cid)
        if rec is None or not rec.info.visible_to(caller, write=write):
            raise classifier_not_found(cid)
        return rec

    async def _persist(self, cid: str, blob: bytes) -> None:
        try:
            await self.store.save_classifier(cid, blob)
        except StaleWriter as err:
            self.fence_lost(err)
            raise

    # -- idempotency ------------------------------------------------------------------------------------------
    def _claim(self, cid: str, update_id: str) -> tuple[str, str] | None:
        """Mark an update id as being applied to ``cid``; IdempotencyKeyInUse if it already is. Synchronous (no
        await between the check and the mark), so of two requests with one key exactly one gets the claim."""
        if not update_id:
            return None
        key = (cid, update_id)
        if key in self._inflight:
            raise IdempotencyKeyInUse(
                f"A request with this Idempotency-Key is still being applied (classifier '{cid}' is currently being "
                "modified); this one changed nothing. Please retry after a few moments: the retry answers with that "
                "request's result."
            )
        self._inflight.add(key)
        return key

    def _replay(self, rec: ClassifierRecord, batch: TrainBatch) -> TrainOutcome | None:
        """The first answer again if ``batch``'s update id was applied to ``rec`` (an idempotent retry); None if it
        is new. The id with a different request's fingerprint raises IdempotencyKeyReused: replaying would tell
        the client a request that was never applied had succeeded."""
        known = rec.applied(batch.update_id)
        if known is None:
            return None
        added, fingerprint = known
        if fingerprint and batch.fingerprint and fingerprint != batch.fingerprint:
            raise IdempotencyKeyReused(
                "This Idempotency-Key was already used with a different /train request (another body) on this "
                "account; nothing was applied. Resend that request unchanged to get its answer, or use a new key "
                "for a new request."
            )
        return self._outcome(rec, added, replayed=True)

    # -- ClassifierRepo ---------------------------------------------------------------------------------------
    async def create(self, new: NewClassifier, batch: TrainBatch, *, classifier_id: str | None = None) -> TrainOutcome:
        """Reserve the owner's quota and write the classifier, shielded from the caller's cancellation (the
        in-flight mark lasts as long as the shielded work, not the caller)."""
        self._check_current()
        cid = classifier_id or (id_for_create(new.owner, batch.update_id) if batch.update_id else str(uuid.uuid4()))
        claim = self._claim(cid, batch.update_id)
        work = asyncio.ensure_future(self._create(cid, new, batch))
        if claim is not None:
            work.add_done_callback(lambda _: self._inflight.discard(claim))
        return await asyncio.shield(work)

    async def _create(self, cid: str, new: NewClassifier, batch: TrainBatch) -> TrainOutcome:
        async with self._lock(self._owner_locks, new.owner), self._lock(self._locks, cid):
            existing = await self._get(cid)
            if existing is not None:
                replay = self._replay(existing, batch) if existing.owner == new.owner else None
                if replay is not None:
                    return replay  # a retry (or IdempotencyKeyReused above: the key with another body)
                raise ResourceLimitExceeded(f"classifier id {cid} already exists")
            owned = await self.store.owned(new.owner)
            if len(owned) >= self.limits.max_classifiers_per_owner:
                raise ResourceLimitExceeded(
                    f"Resource limit exceeded. Current: {len(owned)} classifiers, limit: "
                    f"{self.limits.max_classifiers_per_owner}. Delete existing classifiers first."
                )
            self._check_classes(set(labels_of(batch.y)) | set(batch.declared), set())
            now = self._clock()
            learner = FewShotLearner(new.dim, score_scale=new.score_scale, config=self._learner_config)
            await _apply(learner, batch)
            rec = ClassifierRecord(
                classifier_id=cid, owner=new.owner, model=new.model, access=new.access, learner=learner,
                created_at=now, updated_at=now, num_samples=len(batch.y), recent_updates={batch.update_id: len(batch.y)},
                fingerprints={batch.update_id: batch.fingerprint} if batch.fingerprint else {},
                created_by={"update_id": batch.update_id, "fingerprint": batch.fingerprint, "num_samples": len(batch.y)}
                if batch.update_id else None,
                learn_from_inputs=bool(batch.learn_from_inputs),
            )
            blob = rec.to_bytes()
            # The owner's marker first: a crash between the two writes leaves a counted marker without a
            # classifier (dropped by listing once stale), never a classifier its owner can neither see nor count.
            try:
                await self.store.add_owned(new.owner, cid, now)
            except StaleWriter as err:
                self.fence_lost(err)
                raise
            try:
                await self._persist(cid, blob)
            except BaseException:
                await self.store.remove_owned(new.owner, cid)
                raise
            self._remember(rec)
            return self._outcome(rec, len(batch.y))

    async def train(self, classifier_id: str, caller: str, batch: TrainBatch) -> TrainOutcome:
        cid = classifier_id
        await self._visible(cid, caller, write=True)  # unknown ids fail here, before a lock is made for them
        claim = self._claim(cid, batch.update_id)
        try:
            return await self._train(cid, caller, batch)
        finally:
            if claim is not None:
                self._inflight.discard(claim)

    async def _train(self, cid: str, caller: str, batch: TrainBatch) -> TrainOutcome:
        async with self._lock(self._locks, cid):
            rec = await self._visible(cid, caller, write=True)
            replay = self._replay(rec, batch)
            if replay is not None:
                return replay
            self._check_classes(set(labels_of(batch.y)) | set(batch.declared), set(rec.labels))
            # The statistics come from the store (the in-memory record holds only the predictor); this fresh
            # copy is updated, persisted, and only then swapped in: no partial update, ever.
            stored = await self._load(cid)  # the statistics; the counters stay those of `rec`
            if stored is None:  # deleted meanwhile by a writer this table cannot see: it is gone
                self._loaded.pop(cid, None)
                raise classifier_not_found(cid)
            learner = stored.learner
            assert learner is not None  # _load returns the stored record with its statistics
            await _apply(learner, batch)
            recent = dict(list(rec.recent_updates.items())[-(RECENT_UPDATES - 1) :])
            recent[batch.update_id] = len(batch.y)
            fingerprints = {u: rec.fingerprints[u] for u in recent if u in rec.fingerprints}
            if batch.fingerprint:
                fingerprints[batch.update_id] = batch.fingerprint
            new = ClassifierRecord(
                classifier_id=cid, owner=rec.owner, model=rec.model, access=rec.access, learner=learner,
                created_at=rec.created_at, updated_at=self._clock(), updated_number=rec.updated_number + 1,
                num_samples=rec.num_samples + len(batch.y), recent_updates=recent, fingerprints=fingerprints,
                created_by=rec.created_by, used_number=rec.used_number, used_at=rec.used_at,
                learn_from_inputs=rec.learn_from_inputs if batch.learn_from_inputs is None else batch.learn_from_inputs,
            )
            await self._persist(cid, new.to_bytes())  # durable before it is visible or acknowledged
            self._remember(new)
            if not new.learn_from_inputs:
                self._pending.drop(cid)  # turned off: what waits is not learned
            return self._outcome(new, len(batch.y))

    def _check_classes(self, new: set[str], known: set[str]) -> None:
        total = len(known | new)
        if total > self.limits.max_classes:
            raise LabelLimitExceeded(
                f"Label limit exceeded: {total} labels provided, maximum {self.limits.max_classes} allowed per classifier"
            )

    @staticmethod
    def _outcome(rec: ClassifierRecord, added: int, *, replayed: bool = False) -> TrainOutcome:
        return TrainOutcome(rec.classifier_id, added, rec.num_samples, rec.labels, replayed=replayed)

    async def info(self, classifier_id: str, caller: str, *, write: bool) -> ClassifierInfo:
        return (await self._visible(classifier_id, caller, write=write)).info

    async def classify(
        self, classifier_id: str, caller: str, X: np.ndarray, *, oos_spec: ModelSpec | None = None,
        multi_label: LabelQuery | None = None,
    ) -> Scores:
        rec = await self._visible(classifier_id, caller, write=False)
        predictor = rec.predictor  # one reference: a concurrent update swaps the record, never mutates this
        assert predictor is not None  # loaded records are compiled
        logits = predictor.decision_function(X)
        oos = None
        if oos_spec is not None:
            try:
                oos = fewshot_oos_score(predictor, X, oos_spec, logits=logits)
            except ValueError as err:  # declared labels only, on a model without a zero-shot calibration
                raise InvalidInput(f"`abstain` is not available for this classifier yet: {err}") from err
        label_probs = predicted = None
        if multi_label is not None:
            label_probs = predictor.label_probs(logits)
            predicted = predictor.multi_label(logits, multi_label.threshold)
            if predicted is None:  # no per-label record yet (declared labels only): the model's zero-shot rule
                predicted = label_probs >= (multi_label.threshold or multi_label.fallback)
        rec.used_number += 1
        rec.used_at = self._clock()
        self._dirty_usage.add(classifier_id)
        if rec.learn_from_inputs and rec.owner == caller and len(X):  # another account's inputs are not the owner's
            self._queue_inputs(classifier_id, X)
        return Scores(list(predictor.labels), softmax(logits), oos, label_probs, predicted)

    async def list(self, owner: str) -> list[ClassifierSummary]:
        self._check_current()
        ids = await self.store.owned(owner)
        records = await asyncio.gather(*(self._listed(cid) for cid in ids))
        out = []
        for cid, rec in zip(ids, records, strict=True):
            if rec is None:  # reserved, not (yet) created: a create in flight, or one that crashed long ago
                await self._release_stale(owner, cid)
            elif rec.owner == owner:
                out.append(rec.summary())
        return sorted(out, key=lambda s: s.created_at)

    async def _listed(self, cid: str) -> ClassifierRecord | None:
        if self._owns(cid):
            return await self._get(cid)
        rec = await self._read(cid)  # another table serves it: read, don't cache (its counters may lag a flush)
        return rec.compiled() if rec is not None else None

    async def _release_stale(self, owner: str, cid: str) -> None:
        """Drop a reservation whose create never finished, but never one that may still be in flight."""
        async with self._lock(self._owner_locks, owner):
            since = await self.store.owned_since(owner, cid)
            if since is not None and self._clock() - since > STALE_RESERVATION_S and await self.store.load_classifier(cid) is None:
                await self.store.remove_owned(owner, cid)

    async def delete(self, classifier_id: str, caller: str) -> None:
        cid = classifier_id
        await self._visible(cid, caller, write=True)
        async with self._lock(self._locks, cid):
            rec = await self._visible(cid, caller, write=True)
            try:
                await self.store.delete_classifier(cid, rec.owner)
            except StaleWriter as err:
                self.fence_lost(err)
                raise
            self._loaded.pop(cid, None)
            self._dirty_usage.discard(cid)
            self._evicted_usage.pop(cid, None)
            self._pending.drop(cid)
        self._locks.pop(cid, None)

    # -- learning from inputs ---------------------------------------------------------------------------------
    def _queue_inputs(self, cid: str, X: np.ndarray) -> None:
        """Keep ``X`` (within the bounds) for ``cid``'s next adaptation step; start or wake its learning task."""
        full = self._pending.add(cid, X)
        if cid not in self._learning:
            self._learning[cid] = asyncio.get_running_loop().create_task(self._learn_when_due(cid))
        elif full and cid in self._wake:
            self._wake[cid].set()

    async def _learn_when_due(self, cid: str) -> None:
        """Learn ``cid``'s waiting inputs a chunk at a time (full, or ``max_wait_s`` old) until none wait."""
        try:
            while (delay := self._pending.due_in(cid)) is not None:
                if delay > 0:
                    wake = self._wake.setdefault(cid, asyncio.Event())
                    wake.clear()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(wake.wait(), delay)
                    continue
                X = self._pending.take(cid)
                if X is not None:
                    await self._learn_inputs(cid, X)
        finally:
            self._learning.pop(cid, None)
            self._wake.pop(cid, None)

    async def _learn_inputs(self, cid: str, X: np.ndarray) -> None:
        """One adaptation step: the stored statistics, ``learn_unlabeled``, a fenced write, swapped in (as a
        /train, under the classifier's lock, so a concurrent train is never lost). Failures only cost the chunk."""
        try:
            async with self._lock(self._locks, cid):
                rec = await self._get(cid)
                if rec is None or not rec.learn_from_inputs:  # deleted, or learning turned off meanwhile
                    return
                stored = await self._load(cid)
                if stored is None or stored.learner is None:
                    self._loaded.pop(cid, None)
                    return
                learner = stored.learner
                learned = await asyncio.to_thread(learner.learn_unlabeled, X)
                new = dataclasses.replace(rec, learner=learner, predictor=None)
                await self._persist(cid, new.to_bytes())
                self._remember(new)
                self.learning_stats["inputs_learned"] += learned
                self.learning_stats["steps"] += 1
        except StaleWriter:
            logger.warning("classifier %s: not learning from inputs, this table lost the store's fence", cid)
        except Exception:  # noqa: BLE001 - a step is best effort: it must never fail a classify or a train
            self.learning_stats["failed_steps"] += 1
            logger.exception("classifier %s: learning from %d inputs failed; they are dropped", cid, len(X))

    def configure_learning(self, config: InputLearningConfig) -> None:
        """New chunking and bounds (a redeploy's settings); what waits stays and is learned under them."""
        self._pending.config = config

    async def learn_waiting_now(self) -> None:
        """Learn every classifier's waiting inputs now, whatever their age (tools, tests, an orderly shutdown)."""
        for cid in list(self._learning):
            X = self._pending.take(cid)
            if X is not None:
                await self._learn_inputs(cid, X)

    @property
    def loaded_count(self) -> int:
        return len(self._loaded)

    async def stats(self) -> builtins.list[dict]:  # builtins: `list` here is the method above
        return [{
            "loaded": len(self._loaded),
            "capacity": self.capacity,
            "stored_state_bytes": int(sum(r.state_bytes for r in self._loaded.values())),
            "memory_bytes": int(sum(r.predictor.nbytes for r in self._loaded.values() if r.predictor is not None)),
            "inputs_waiting": self._pending.total,
            "inputs_waiting_bytes": self._pending.nbytes,
            "inputs_dropped": self._pending.dropped,
            **self.learning_stats,
        }]

    # -- usage counters -------------------------------------------------------------------------------------
    async def flush_usage(self) -> int:
        """Persist changed use counters (one store round trip for all of them); returns how many."""
        counters = dict(self._evicted_usage)
        for cid in self._dirty_usage:
            rec = self._loaded.get(cid)
            if rec is not None:
                counters[cid] = {"used_number": rec.used_number, "used_at": rec.used_at}
        self._dirty_usage.clear()
        self._evicted_usage.clear()
        try:
            await self.store.write_usage(counters)
        except BaseException:
            for cid, usage in counters.items():  # try again next time; newer in-memory counts still win
                self._evicted_usage.setdefault(cid, usage)
            raise
        return len(counters)
