"""Classifier state in Ray actors keyed by classifier_id: one set of named state-shard actors per store.

``classifier_id`` is hashed (stable, sha256) onto ``num_shards`` named actors; each shard is a thin actor
around a :class:`~classifiers.fewshot.table.ClassifierTable` (loaded lazily from the store, LRU-bounded).
:class:`ShardedRepo` is the Ray implementation of :class:`~classifiers.fewshot.repository.ClassifierRepo`: every
operation is one direct actor method call on the shard that owns the id (a new classifier's id is chosen to
live on its owner's shard, so the owner's quota check and the write are one call, atomic under the owner's
lock). Why shards and not one actor per classifier: ``docs/state.md``.

A shard set's identity is (store URL, shard count): limits and capacities are settings pushed to the shards
(:meth:`ClassifierShard.configure`), changeable without a new set. A deploy claims the store for its set
(``StateStore.claim``, fenced by deploy generation) and kills shard actors of any other set over the same
store; a shard that finds another set named in the store's fence stops serving (StaleWriter, a 503).
"""
from __future__ import annotations

import asyncio
import builtins
import dataclasses
import hashlib
import logging
import time
import uuid
from typing import Any, Awaitable, Callable, TypeVar

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from classifiers.catalog.registry import ModelSpec
from classifiers.fewshot.record import migrate_legacy_owners
from classifiers.fewshot.repository import (
    ClassifierInfo,
    LabelQuery,
    NewClassifier,
    Scores,
    TrainBatch,
    TrainOutcome,
    id_for_create,
)
from classifiers.fewshot.table import ClassifierTable
from classifiers.protocol.errors import IdempotencyKeyInUse, ServiceUnavailable, StaleWriter
from classifiers.protocol.wire import ClassifierSummary
from classifiers.request.limits import Limits
from classifiers.storage.store import BlobStore, StateStore
from deployments.config import StateConfig
from deployments.metrics import ShardMetrics
from deployments.process import memory

logger = logging.getLogger("ray.serve")
NAMESPACE = "ray-classifier"
T = TypeVar("T")


def shard_of(key: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % num_shards


def store_digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:10]


def shard_set_name(store_url: str, num_shards: int) -> str:
    """The identity of a shard set: which store, how many shards. Nothing else."""
    return f"{store_digest(store_url)}-{num_shards}"


def new_id_on_shard(shard: int, num_shards: int, owner: str, update_id: str) -> str:
    """The create's classifier id (derived from its update id: a retried create names the same classifier) that
    hashes to `shard` (about num_shards derivations). Without an update id: a random one."""
    update_id = update_id or uuid.uuid4().hex
    attempt = 0
    while True:
        cid = id_for_create(owner, update_id, attempt)
        if shard_of(cid, num_shards) == shard:
            return cid
        attempt += 1


# Ray's typed overloads of ray.remote(...) list task options only, not actor ones such as max_concurrency.
@ray.remote(max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class ClassifierShard:
    """Thin actor around a ClassifierTable: lifecycle, settings, the periodic usage flush and fence check."""

    def __init__(self, index: int, num_shards: int, blobs: BlobStore, writer: str, limits: Limits, settings: StateConfig):
        self.index = index
        self.store = StateStore(blobs, writer=writer)
        self.table = ClassifierTable(
            self.store, limits, capacity=settings.capacity, owns=lambda cid: shard_of(cid, num_shards) == index,
            learning=settings.learning,
        )
        self.settings = settings
        self.metrics = ShardMetrics(index)
        self._loop_task: asyncio.Task | None = None
        try:
            self.store.check_fence_now()  # a shard (re)started for a replaced set must not serve at all
        except StaleWriter as err:
            self.table.fence_lost(err)
        logger.info("classifier shard %d of set %s up, store %s", index, writer, blobs.url)

    def _ensure_loop(self) -> None:
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._maintain())

    async def _maintain(self) -> None:
        """Flush use counters and re-check the fence, off the request path (the store runs in its own threads)."""
        last_fence = 0.0
        while True:
            await asyncio.sleep(min(self.settings.usage_flush_s, self.settings.fence_check_s))
            try:
                if time.monotonic() - last_fence >= self.settings.fence_check_s:
                    last_fence = time.monotonic()
                    await self.store.check_fence()
                await self.table.flush_usage()
                self.metrics.set_loaded(self.table.loaded_count)
            except StaleWriter as err:
                logger.warning("shard %d: %s", self.index, err.detail)
                self.table.fence_lost(err)
                return
            except Exception:  # noqa: BLE001 - counters are best effort; state writes are not
                logger.exception("shard %d: usage flush failed", self.index)

    async def configure(self, limits: Limits, settings: StateConfig) -> None:
        """Apply the deploying replica's limits and capacities (no new shard set needed for them)."""
        self._ensure_loop()
        self.table.limits, self.table.capacity, self.settings = limits, settings.capacity, settings
        self.table.configure_learning(settings.learning)

    async def create(self, new: NewClassifier, batch: TrainBatch, classifier_id: str) -> TrainOutcome:
        self._ensure_loop()
        return await self.table.create(new, batch, classifier_id=classifier_id)

    async def train(self, cid: str, caller: str, batch: TrainBatch) -> TrainOutcome:
        self._ensure_loop()
        return await self.table.train(cid, caller, batch)

    async def info(self, cid: str, caller: str, write: bool) -> ClassifierInfo:
        self._ensure_loop()
        return await self.table.info(cid, caller, write=write)

    async def classify(
        self, cid: str, caller: str, X: np.ndarray, oos_spec: ModelSpec | None, multi_label: LabelQuery | None = None
    ) -> Scores:
        self._ensure_loop()
        return await self.table.classify(cid, caller, X, oos_spec=oos_spec, multi_label=multi_label)

    async def list(self, owner: str) -> list[ClassifierSummary]:
        self._ensure_loop()
        return await self.table.list(owner)

    async def delete(self, cid: str, caller: str) -> None:
        self._ensure_loop()
        await self.table.delete(cid, caller)

    async def stats(self) -> dict:
        (table,) = await self.table.stats()
        return {"shard": self.index, **memory(), **table}


class ShardedRepo:
    """The Ray ClassifierRepo: get-or-create the named shard actors, call them directly, retry a dead one.

    A retried call is safe: updates carry an update id the shard recognises if it already applied it, and a
    create's id is chosen before the first attempt. ``generation`` orders deploys (the builder passes its
    deploy time): the newest deploy's set owns the store.
    """

    RETRIES = 3

    def __init__(self, blobs: BlobStore, settings: StateConfig, limits: Limits, *, generation: int):
        self.blobs = blobs
        self.settings = settings
        self.limits = limits
        self.generation = generation
        self.num_shards = settings.num_shards
        self.writer = shard_set_name(blobs.url, self.num_shards)
        self._options = {
            "namespace": NAMESPACE,
            "get_if_exists": True,
            "num_cpus": settings.num_cpus,
            "scheduling_strategy": "SPREAD",
            "lifetime": "detached" if settings.detached else None,
        }
        self._handles: dict[int, Any] = {}
        self._started: asyncio.Task | None = None
        self._store = StateStore(blobs, writer=self.writer)  # this repo's own store calls: claim, fence re-checks

    def actor_name(self, i: int) -> str:
        return f"classifier-shard-{self.writer}-{i}"

    # -- start: claim the store, retire replaced sets -------------------------------------------------------
    async def _start(self) -> None:
        await self._store.claim(self.writer, self.generation)
        await migrate_legacy_owners(self._store)
        prefix, mine = f"classifier-shard-{store_digest(self.blobs.url)}-", f"classifier-shard-{self.writer}-"
        for actor in ray.util.list_named_actors(all_namespaces=True):
            name = actor["name"]
            if actor["namespace"] == NAMESPACE and name.startswith(prefix) and not name.startswith(mine):
                try:
                    ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)
                    logger.info("retired state shard %s of a replaced shard set", name)
                except ValueError:
                    pass  # already gone

    async def start(self) -> None:
        """Claim the store once per repo (idempotent; every operation awaits it)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        try:
            await asyncio.shield(self._started)
        except BaseException:
            if self._started.done():
                self._started = None  # a failed start is retried by the next call
            raise

    def _handle(self, i: int, fresh: bool = False):
        if fresh or i not in self._handles:
            # an ActorClass (ray.remote above): mypy keeps a decorated class's type (python/mypy#3135)
            actor = ClassifierShard.options(name=self.actor_name(i), **self._options).remote(  # type: ignore[attr-defined]
                i, self.num_shards, self.blobs, self.writer, self.limits, self.settings
            )
            actor.configure.remote(self.limits, self.settings)  # an existing actor keeps its old constructor args
            self._handles[i] = actor
        return self._handles[i]

    async def _call(self, shard: int, method: Callable[[Any], Awaitable[T]]) -> T:
        await self.start()
        fresh = False
        for attempt in range(self.RETRIES + 1):
            try:
                return await method(self._handle(shard, fresh=fresh))
            except StaleWriter:
                # A shard of this set that was fenced off while another set owned the store (this set has
                # reclaimed it since): replace it with a fresh actor, once. Otherwise this set is the stale one.
                fence = await self._store.fence()
                if attempt == self.RETRIES or fence is None or fence.writer != self.writer:
                    raise
                ray.kill(self._handle(shard), no_restart=True)
                await asyncio.sleep(0.2)
                fresh = True
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempt == self.RETRIES:
                    raise ServiceUnavailable(f"classifier state shard {shard} is unavailable; retry shortly") from exc
                # A just-killed actor's name can linger for a moment: back off, then get-or-create again.
                logger.warning("classifier shard %d unavailable (%s); reconnecting (retry %d)", shard, type(exc).__name__, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))
                fresh = True
        raise AssertionError("unreachable")

    # -- ClassifierRepo -------------------------------------------------------------------------------------
    async def create(self, new: NewClassifier, batch: TrainBatch) -> TrainOutcome:
        shard = shard_of(new.owner, self.num_shards)
        cid = new_id_on_shard(shard, self.num_shards, new.owner, batch.update_id)  # every retry: the same classifier
        return await self._write(shard, lambda a: a.create.remote(new, batch, cid))

    async def train(self, classifier_id: str, caller: str, batch: TrainBatch) -> TrainOutcome:
        return await self._write(shard_of(classifier_id, self.num_shards), lambda a: a.train.remote(classifier_id, caller, batch))

    OWN_RETRY_WAIT_S = 10.0  # how long a retried write waits for its own first attempt, still running on the shard

    async def _write(self, shard: int, method) -> TrainOutcome:
        """A create or update; ``replayed`` only when a *client's* earlier request applied it, not when this call's
        own first attempt did (the actor died after applying it and this call retried). A retry that finds its
        own first attempt still running there (the actor was unreachable, not dead: IdempotencyKeyInUse) waits
        for it instead of answering the client 409 for its own request."""
        attempts = 0

        def counted(actor):
            nonlocal attempts
            attempts += 1
            return method(actor)

        deadline = time.monotonic() + self.OWN_RETRY_WAIT_S
        while True:
            try:
                outcome = await self._call(shard, counted)
                break
            except IdempotencyKeyInUse:
                if attempts <= 1 or time.monotonic() > deadline:
                    raise  # another request's key in use (or ours, for too long): the client decides
                await asyncio.sleep(0.2)
        if outcome.replayed and attempts > 1:
            outcome = dataclasses.replace(outcome, replayed=False)
        return outcome

    async def info(self, classifier_id: str, caller: str, *, write: bool) -> ClassifierInfo:
        return await self._call(shard_of(classifier_id, self.num_shards), lambda a: a.info.remote(classifier_id, caller, write))

    async def classify(
        self, classifier_id: str, caller: str, X: np.ndarray, *, oos_spec: ModelSpec | None = None,
        multi_label: LabelQuery | None = None,
    ) -> Scores:
        return await self._call(
            shard_of(classifier_id, self.num_shards),
            lambda a: a.classify.remote(classifier_id, caller, X, oos_spec, multi_label),
        )

    async def list(self, owner: str) -> list[ClassifierSummary]:
        return await self._call(shard_of(owner, self.num_shards), lambda a: a.list.remote(owner))

    async def delete(self, classifier_id: str, caller: str) -> None:
        await self._call(shard_of(classifier_id, self.num_shards), lambda a: a.delete.remote(classifier_id, caller))

    async def stats(self) -> builtins.list[dict]:  # builtins: `list` here is the method above
        return list(await asyncio.gather(*(self._call(i, lambda a: a.stats.remote()) for i in range(self.num_shards))))
