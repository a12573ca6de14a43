"""Classifier state in Ray actors keyed by classifier_id: a fixed set of named state-shard actors.

``classifier_id`` is hashed (stable, sha256) onto ``num_shards`` named actors; each shard holds the
classifiers that hash to it in a :class:`~classifiers.state.ClassifierBook` (loaded lazily from the store,
LRU-bounded). Why shards and not one actor per classifier: an actor is a worker process (~60-100 MB RSS before
any state), so 10,000 classifiers on one node as 10,000 actors would need ~1 TB; 8 shards hold 10,000
classifiers in 8 processes whose memory is just the state (~0.6 MB per classifier at 384 dimensions, bounded
by `capacity`). On a multi-node cluster the shards spread over nodes (SPREAD), every shard reads and writes
the shared store (s3://, gs://), so a shard restarted on another node — or a new cluster — serves the same
classifiers. Shards are async actors: updates to one classifier are serialised by its lock while every other
call proceeds.

An owner's classifier count and listing live on the owner's shard (hash of the owner), so the per-owner
limit is checked under one lock no matter which shards hold the classifiers.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from typing import Any

import numpy as np
import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from classifiers.limits import Limits
from classifiers.state import ClassifierBook, ClassifierInfo, TrainOutcome
from classifiers.store import open_store

logger = logging.getLogger("ray.serve")
NAMESPACE = "ray-classifier"


@ray.remote(max_restarts=-1, max_concurrency=1000)
class ClassifierShard:
    """Thin actor around a ClassifierBook. Usage counters flush to the store every few seconds."""

    def __init__(self, index: int, store_url: str, limits: dict, capacity: int, usage_flush_s: float):
        self.index = index
        self.book = ClassifierBook(open_store(store_url), Limits(**limits), capacity=capacity)
        self._usage_flush_s = usage_flush_s
        self._flusher: asyncio.Task | None = None
        logger.info("classifier shard %d up, store %s", index, store_url)

    def _ensure_flusher(self) -> None:
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self._usage_flush_s)
            try:
                self.book.flush_usage()
            except Exception:  # noqa: BLE001 - counters are best effort; state writes are not
                logger.exception("shard %d: usage flush failed", self.index)

    async def reserve(self, owner: str, cid: str) -> None:
        await self.book.reserve(owner, cid)

    async def release(self, owner: str, cid: str) -> None:
        await self.book.release(owner, cid)

    async def owned(self, owner: str) -> list[str]:
        return await self.book.owned(owner)

    async def release_stale(self, owner: str, cid: str) -> None:
        await self.book.release_stale(owner, cid)

    async def create(self, cid: str, owner: str, model: str, access: str, **kw) -> TrainOutcome:
        return await self.book.create(cid, owner, model, access, **kw)

    async def train(self, cid: str, caller: str, **kw) -> TrainOutcome:
        return await self.book.train(cid, caller, **kw)

    async def info(self, cid: str, caller: str, write: bool) -> ClassifierInfo:
        return await self.book.info(cid, caller, write)

    async def classify(self, cid: str, caller: str, X: np.ndarray) -> tuple[list[str], np.ndarray]:
        self._ensure_flusher()
        return await self.book.classify(cid, caller, X)

    async def summary(self, cid: str, caller: str) -> dict | None:
        return await self.book.summary(cid, caller)

    async def delete(self, cid: str, caller: str) -> None:
        await self.book.delete(cid, caller)

    async def flush(self) -> int:
        return self.book.flush_usage()

    async def stats(self) -> dict:
        return {"shard": self.index, "rss_bytes": _rss_bytes(), **self.book.stats()}


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def shard_of(key: str, num_shards: int) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % num_shards


class ShardClient:
    """How the router reaches the shards: get-or-create named actors, retry if a shard died.

    A retried call is safe: train/create carry an update id the shard recognises if it already applied it.
    """

    RETRIES = 3

    def __init__(self, *, num_shards: int, store_url: str, limits: Limits, capacity: int, usage_flush_s: float,
                 num_cpus: float, detached: bool):
        self.num_shards = num_shards
        self._args = (store_url, limits.model_dump(), capacity, usage_flush_s)
        # Detached actors outlive redeploys; a changed store, limit or shard count must get fresh shards,
        # never silently reuse ones built with the old settings.
        digest = hashlib.sha256(json.dumps([num_shards, *self._args], sort_keys=True).encode()).hexdigest()[:10]
        self.name_prefix = f"classifier-shard-{digest}"
        self._options = {
            "namespace": NAMESPACE,
            "get_if_exists": True,
            "num_cpus": num_cpus,
            "scheduling_strategy": "SPREAD",
            "lifetime": "detached" if detached else None,
        }
        self._handles: dict[int, Any] = {}

    def actor_name(self, i: int) -> str:
        return f"{self.name_prefix}-{i}"

    def _handle(self, i: int, fresh: bool = False):
        if fresh or i not in self._handles:
            self._handles[i] = ClassifierShard.options(name=self.actor_name(i), **self._options).remote(i, *self._args)
        return self._handles[i]

    async def call(self, key: str, method: str, *args, **kwargs):
        i = shard_of(key, self.num_shards)
        for attempt in range(self.RETRIES + 1):
            try:
                return await getattr(self._handle(i, fresh=attempt > 0), method).remote(*args, **kwargs)
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempt == self.RETRIES:
                    raise
                # A just-killed actor's name can linger for a moment: back off, then get-or-create again.
                logger.warning("classifier shard %d unavailable (%s); reconnecting (retry %d)", i, type(exc).__name__, attempt + 1)
                await asyncio.sleep(0.5 * (attempt + 1))

    async def all(self, method: str) -> list:
        return await asyncio.gather(*(getattr(self._handle(i), method).remote() for i in range(self.num_shards)))

