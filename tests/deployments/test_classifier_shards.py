"""The Ray ClassifierRepo: routing by hash, one shard set per store (fencing), retries, store I/O off the loop."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
import ray

from classifiers.fewshot.repository import ClassifierRepo, NewClassifier, TrainBatch
from classifiers.protocol.errors import ServiceUnavailable
from classifiers.request.limits import Limits
from classifiers.storage.store import LocalDirStore
from deployments.classifier_shards import NAMESPACE, ShardedRepo, new_id_on_shard, shard_of, shard_set_name
from deployments.config import StateConfig
from tests.slow_store import SwitchableSlowStore

D = 8
rng = np.random.default_rng(3)
CENTERS = {lab: rng.normal(size=D) for lab in "abc"}


def batch(labels: str, n: int = 4, seed: int = 0, update_id: str = "u") -> TrainBatch:
    r = np.random.default_rng(seed)
    X = np.array([CENTERS[lab] + 0.2 * r.normal(size=D) for lab in labels for _ in range(n)])
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    return TrainBatch(X, [lab for lab in labels for _ in range(n)], 1.0, {}, update_id)


NEW = NewClassifier(owner="alice", model="m", access="private", dim=D, score_scale=20.0)


def repo(blobs, num_shards: int, generation: int, **settings) -> ShardedRepo:
    cfg = StateConfig(store_url=blobs.url, num_shards=num_shards, detached=False, num_cpus=0.01, **settings)
    return ShardedRepo(blobs, cfg, Limits(), generation=generation)


def shard_actors(store_url: str) -> set[str]:
    prefix = f"classifier-shard-{shard_set_name(store_url, 1).rsplit('-', 1)[0]}-"
    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(prefix)}


def retire(store_url: str) -> None:
    for name in shard_actors(store_url):
        ray.kill(ray.get_actor(name, namespace=NAMESPACE), no_restart=True)


def run(coro):
    return asyncio.run(coro)


def test_routing_is_a_stable_hash_and_new_ids_live_on_their_owners_shard():
    assert shard_of("alice", 4) == shard_of("alice", 4) and {shard_of(f"k{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    for shard in range(5):
        assert shard_of(new_id_on_shard(shard, 5, "owner", f"u{shard}"), 5) == shard
    # A create's id derives from its update id (a retried create names the same classifier), per owner.
    assert new_id_on_shard(1, 4, "alice", "k") == new_id_on_shard(1, 4, "alice", "k") != new_id_on_shard(1, 4, "bob", "k")
    assert new_id_on_shard(1, 4, "alice", "") != new_id_on_shard(1, 4, "alice", "")  # no update id: random
    # A set is its store and its shard count: limits and capacities are settings, not identity.
    assert shard_set_name("/s", 4) == shard_set_name("/s", 4) != shard_set_name("/s", 5) != shard_set_name("/t", 4)


def test_sharded_repo_is_a_classifier_repo_and_retries_a_killed_shard(ray_cluster, tmp_path):
    blobs = LocalDirStore(tmp_path)
    r = repo(blobs, 2, generation=1)
    assert isinstance(r, ClassifierRepo)
    try:
        out = run(r.create(NEW, batch("ab")))
        X = batch("ab", n=1, seed=5).X
        before = run(r.classify(out.classifier_id, "alice", X))
        retire(blobs.url)  # every shard dies; the next call re-creates its shard, which reloads from the store
        after = run(r.classify(out.classifier_id, "alice", X))
        # Bit for bit on purpose: the same X (no engine involved), a new shard process on this machine, so only a
        # lossy reload of the stored classifier could move a probability.
        assert after.labels == before.labels and np.array_equal(after.probs, before.probs)
        assert [s.classifier_id for s in run(r.list("alice"))] == [out.classifier_id]
    finally:
        retire(blobs.url)


def test_two_shard_sets_over_one_store_lose_nothing_and_serve_nothing_stale(ray_cluster, tmp_path):
    """The scenario from the architecture issue: an old set (2 shards) and a new one (3 shards) over one store."""
    blobs = LocalDirStore(tmp_path)
    old, new = repo(blobs, 2, generation=1), repo(blobs, 3, generation=2)
    try:
        cid = run(old.create(NEW, batch("ab", update_id="create"))).classifier_id
        run(new.start())  # the new deploy claims the store and retires the old set's actors
        assert all("-3-" in name for name in shard_actors(blobs.url))

        async def concurrent_updates():
            return await asyncio.gather(
                old.train(cid, "alice", batch("a", seed=1, update_id="via-old")),
                new.train(cid, "alice", batch("b", seed=2, update_id="via-new")),
                return_exceptions=True,
            )

        via_old, via_new = run(concurrent_updates())
        assert isinstance(via_old, ServiceUnavailable) and via_old.status == 503  # refused, retryable: not acknowledged
        assert via_new.total_samples == 8 + 4
        (summary,) = run(new.list("alice"))
        assert summary.num_samples == 12 and summary.updated_number == 1  # every acknowledged update, once

        # A later update through the new set; the old set must not answer with the predictor it had.
        run(new.train(cid, "alice", batch("c", seed=3, update_id="new-class")))
        X = batch("abc", n=1, seed=9).X
        assert run(new.classify(cid, "alice", X)).labels == ["a", "b", "c"]
        with pytest.raises(ServiceUnavailable):
            run(old.classify(cid, "alice", X))

        run(new.delete(cid, "alice"))
        for call in (old.train(cid, "alice", batch("a", update_id="late")), old.info(cid, "alice", write=False)):
            with pytest.raises(ServiceUnavailable):  # never an EOFError (a 500) on a classifier deleted elsewhere
                run(call)
        assert run(new.list("alice")) == []
    finally:
        retire(blobs.url)


def test_a_slow_store_never_delays_classify_on_the_same_shard_actor(ray_cluster, tmp_path):
    flag = tmp_path / "slow"
    blobs = SwitchableSlowStore(tmp_path / "store", flag, delay_s=0.5)
    r = repo(blobs, 1, generation=1, fence_check_s=3600)  # one shard: everything below shares its event loop
    try:
        cid = run(r.create(NEW, batch("ab"))).classifier_id
        X = batch("ab", n=1, seed=4).X

        async def scenario():
            await r.classify(cid, "alice", X)  # warm
            t0 = time.perf_counter()
            await r.classify(cid, "alice", X)
            unloaded = time.perf_counter() - t0
            flag.touch()
            busy = [asyncio.ensure_future(c) for c in (
                r.create(NewClassifier("bob", "m", "private", D, 20.0), batch("ab", update_id="slow")),
                r.list("alice"),
                r.info("not-there", "alice", write=False),
            )]
            await asyncio.sleep(0.1)  # all three are waiting on the store inside the shard now
            t0 = time.perf_counter()
            await r.classify(cid, "alice", X)
            loaded = time.perf_counter() - t0
            flag.unlink()
            await asyncio.gather(*busy, return_exceptions=True)
            return unloaded, loaded

        unloaded, loaded = run(scenario())
        assert loaded < unloaded + 0.1, (unloaded, loaded)  # never the 0.5 s of a store call
    finally:
        flag.unlink(missing_ok=True)
        retire(blobs.url)
