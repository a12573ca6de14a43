"""ClassifierTable: the in-process ClassifierRepo (access rules, no partial update, persistence, fencing)."""
import asyncio
import dataclasses
import io
import json
import time

import numpy as np
import pytest

from classifiers.fewshot.record import FORMAT_VERSION, ClassifierRecord, UnsupportedStateFormat, migrate_legacy_owners
from classifiers.fewshot.repository import ClassifierRepo, NewClassifier, TrainBatch, id_for_create
from classifiers.fewshot.table import RECENT_UPDATES, ClassifierTable
from classifiers.protocol.errors import (
    IdempotencyKeyInUse,
    IdempotencyKeyReused,
    LabelLimitExceeded,
    ResourceLimitExceeded,
    ResourceNotFound,
    StaleWriter,
)
from classifiers.request.limits import Limits
from classifiers.storage.store import ANONYMOUS_OWNER, LocalDirStore, StateStore
from tests.slow_store import SwitchableSlowStore

D = 16
rng = np.random.default_rng(0)
CENTERS = {lab: rng.normal(size=D) for lab in "abcdefghijklmnopqrstuvwxyz"}


def batch(labels, n=3, seed=1, update_id="u"):
    r = np.random.default_rng(seed)
    X, y = [], []
    for lab in labels:
        for _ in range(n):
            v = CENTERS[lab] + 0.3 * r.normal(size=D)
            X.append(v / np.linalg.norm(v))
            y.append(lab)
    return TrainBatch(np.array(X), y, 1.0, priors(set(y)), update_id)


def queries(labels, n=2, seed=9):
    b = batch(labels, n=n, seed=seed)
    return b.X, b.y


def priors(labels):
    return {lab: CENTERS[lab] / np.linalg.norm(CENTERS[lab]) for lab in labels}


def run(coro):
    return asyncio.run(coro)


def new(owner="alice", access="private"):
    return NewClassifier(owner=owner, model="m", access=access, dim=D, score_scale=30.0)


@pytest.fixture
def table(tmp_path):
    return ClassifierTable(StateStore(LocalDirStore(tmp_path)), Limits(max_classes=4, max_classifiers_per_owner=2))


def create(table, cid="c1", owner="alice", access="private", labels="ab"):
    return run(table.create(new(owner, access), batch(labels, update_id=f"create-{cid}"), classifier_id=cid))


def test_the_table_is_a_classifier_repo(table):
    assert isinstance(table, ClassifierRepo)


def test_create_train_classify_and_reload_from_store(table, tmp_path):
    out = create(table)
    assert out.num_samples == 6 and out.labels == ["a", "b"]
    out = run(table.train("c1", "alice", batch("c", seed=2, update_id="u1")))
    assert out.num_samples == 3 and out.total_samples == 9 and out.labels == ["a", "b", "c"]
    Xq, yq = queries("abc")
    scores = run(table.classify("c1", "alice", Xq))
    assert [scores.labels[i] for i in scores.probs.argmax(1)] == yq
    fresh = ClassifierTable(StateStore(LocalDirStore(tmp_path)), table.limits)  # a restarted shard
    again = run(fresh.classify("c1", "alice", Xq))
    assert again.labels == scores.labels and np.array_equal(again.probs, scores.probs)


def test_private_is_invisible_and_public_is_classify_only(table):
    create(table, "priv", access="private")
    create(table, "pub", access="public")
    Xq, _ = queries("a", n=1)
    with pytest.raises(ResourceNotFound):
        run(table.classify("priv", "mallory", Xq))
    run(table.classify("pub", "mallory", Xq))  # anyone with the id may classify
    for call in (
        lambda: table.info("pub", "mallory", write=True),
        lambda: table.train("pub", "mallory", batch("a", update_id="x")),
        lambda: table.delete("pub", "mallory"),
    ):
        with pytest.raises(ResourceNotFound):
            run(call())
    assert run(table.list("mallory")) == []
    assert [s.classifier_id for s in run(table.list("alice"))] == ["priv", "pub"]
    with pytest.raises(ResourceNotFound):
        run(table.classify("missing", "alice", Xq))


def test_class_limit_refusal_changes_nothing(table, tmp_path):
    create(table, labels="abc")
    before = LocalDirStore(tmp_path).read("classifiers/c1.npz")
    with pytest.raises(LabelLimitExceeded, match="5 labels"):
        run(table.train("c1", "alice", batch("de")))
    assert LocalDirStore(tmp_path).read("classifiers/c1.npz") == before
    assert run(table.list("alice"))[0].labels == ["a", "b", "c"]


def test_store_failure_leaves_memory_and_disk_unchanged(table, monkeypatch):
    create(table)
    Xq, _ = queries("ab", seed=5)
    before = run(table.classify("c1", "alice", Xq)).probs

    async def broken(cid, blob):
        raise OSError("store down")

    monkeypatch.setattr(table.store, "save_classifier", broken)
    with pytest.raises(OSError):
        run(table.train("c1", "alice", TrainBatch(batch("b", seed=3).X, ["b"] * 3, 5.0, {}, "u")))
    assert np.array_equal(before, run(table.classify("c1", "alice", Xq)).probs)


def test_retried_update_is_applied_once(table):
    create(table)
    first = run(table.train("c1", "alice", batch("a", seed=4, update_id="same")))
    again = run(table.train("c1", "alice", batch("a", seed=4, update_id="same")))
    assert first.total_samples == again.total_samples == 9


def test_owner_limit_holds_and_a_retried_create_is_not_counted_twice(table):
    create(table, "c1")
    assert create(table, "c1").total_samples == 6  # the same create retried: same classifier, not a second
    create(table, "c2")
    with pytest.raises(ResourceLimitExceeded, match="limit: 2"):
        create(table, "c3")
    run(table.delete("c1", "alice"))
    create(table, "c3")
    assert [s.classifier_id for s in run(table.list("alice"))] == ["c2", "c3"]


def test_racing_creates_never_exceed_the_owner_limit(table):
    async def many():
        return await asyncio.gather(
            *(table.create(new(), batch("ab", update_id=f"r{i}")) for i in range(8)), return_exceptions=True
        )

    results = run(many())
    assert sum(not isinstance(r, Exception) for r in results) == 2
    assert all(isinstance(r, ResourceLimitExceeded) for r in results if isinstance(r, Exception))
    assert len(run(table.list("alice"))) == 2 == len(run(table.store.owned("alice")))


def test_a_cancelled_create_leaves_a_complete_listed_classifier_or_nothing(tmp_path):
    class SlowWrites(LocalDirStore):
        def write(self, key, data):
            time.sleep(0.05)
            super().write(key, data)

    table = ClassifierTable(StateStore(SlowWrites(tmp_path)), Limits(max_classifiers_per_owner=2))

    async def cancel_creates():
        for i in range(5):
            task = asyncio.ensure_future(table.create(new(), batch("ab", update_id=f"k{i}")))
            await asyncio.sleep(0.03)  # mid-write: the client disconnects
            task.cancel()
        await asyncio.sleep(0.5)  # shielded creates finish (or refuse) on their own
        return await table.list("alice"), await table.store.owned("alice")

    listed, owned = run(cancel_creates())
    stored = sorted(p.stem for p in (tmp_path / "classifiers").glob("*.npz"))
    assert len(listed) == len(owned) == len(stored) <= 2
    assert sorted(s.classifier_id for s in listed) == owned == stored


def test_concurrent_updates_are_serialised(table):
    create(table)

    async def many():
        return await asyncio.gather(*(table.train("c1", "alice", batch("ab", n=1, seed=100 + i, update_id=f"u{i}")) for i in range(16)))

    run(many())
    assert run(table.list("alice"))[0].num_samples == 6 + 32


def test_state_holds_no_examples_and_survives_bytes(table):
    create(table)
    blob = LocalDirStore(table.store.url).read("classifiers/c1.npz")
    again = ClassifierRecord.from_bytes(blob)
    assert again.summary().labels == ["a", "b"] and again.num_samples == 6
    big = batch("ab", n=50, seed=7, update_id="z")
    run(table.create(new("bob"), big, classifier_id="c9"))
    assert len(LocalDirStore(table.store.url).read("classifiers/c9.npz")) == pytest.approx(len(blob), rel=0.05)  # 100 vs 6
    assert table._loaded["c9"].learner is None  # in memory: only the compiled predictor


def test_newer_state_formats_are_refused_and_legacy_owners_migrate(table, tmp_path):
    create(table)
    rec = ClassifierRecord.from_bytes(LocalDirStore(tmp_path).read("classifiers/c1.npz"))
    blob_v1 = _with_format(rec, 1, owner="anonymous")
    assert ClassifierRecord.from_bytes(blob_v1).owner == ANONYMOUS_OWNER  # format 1's anonymous owner
    with pytest.raises(UnsupportedStateFormat, match="format 3"):
        ClassifierRecord.from_bytes(_with_format(rec, FORMAT_VERSION + 1))
    run(table.store.add_owned("anonymous", "old", 5.0))
    assert run(migrate_legacy_owners(table.store)) == 1
    assert run(table.store.owned(ANONYMOUS_OWNER)) == ["old"] and run(table.store.owned("anonymous")) == []


def _with_format(rec, version, owner=None):
    with np.load(io.BytesIO(rec.to_bytes())) as z:
        arrays = {k: z[k] for k in z.files if k != "meta"}
        meta = json.loads(str(z["meta"]))
    meta["format"] = version
    if owner:
        meta["owner"] = owner
    buf = io.BytesIO()
    np.savez(buf, meta=np.array(json.dumps(meta)), **arrays)
    return buf.getvalue()


def test_usage_counters_flush_and_eviction_keeps_them(tmp_path):
    table = ClassifierTable(StateStore(LocalDirStore(tmp_path)), Limits(), capacity=1)
    create(table, "c1")
    run(table.classify("c1", "alice", queries("a", n=1)[0]))
    create(table, "c2")  # evicts c1; its counters wait for the next flush
    assert {s.classifier_id: s.used_number for s in run(table.list("alice"))}["c1"] == 1
    assert run(table.flush_usage()) >= 1
    fresh = ClassifierTable(StateStore(LocalDirStore(tmp_path)), Limits())
    assert {s.classifier_id: s.used_number for s in run(fresh.list("alice"))}["c1"] == 1


def test_only_stale_reservations_are_released(tmp_path):
    now = [1000.0]
    table = ClassifierTable(StateStore(LocalDirStore(tmp_path)), Limits(), clock=lambda: now[0])
    run(table.store.add_owned("alice", "in-flight", now[0]))  # a create whose classifier is not written yet
    assert run(table.list("alice")) == []
    assert run(table.store.owned("alice")) == ["in-flight"]  # it may still be running: kept
    now[0] += 3600
    run(table.list("alice"))
    assert run(table.store.owned("alice")) == []


def test_unknown_ids_leave_no_locks_behind(table):
    for i in range(50):
        with pytest.raises(ResourceNotFound):
            run(table.delete(f"missing-{i}", "alice"))
        with pytest.raises(ResourceNotFound):
            run(table.train(f"missing-{i}", "alice", batch("a", update_id="u")))
    create(table)
    run(table.delete("c1", "alice"))
    assert table._locks == {}


def test_a_replaced_table_stops_serving_reads_and_writes(tmp_path):
    blobs = LocalDirStore(tmp_path)
    old = ClassifierTable(StateStore(blobs, writer="set-a"), Limits())
    current = ClassifierTable(StateStore(blobs, writer="set-b"), Limits())
    run(old.store.claim("set-a", 1))
    create(old)
    run(current.store.claim("set-b", 2))
    with pytest.raises(StaleWriter):
        run(old.train("c1", "alice", batch("a", update_id="late")))
    with pytest.raises(StaleWriter):  # the failed write fenced it off: no stale prediction either
        run(old.classify("c1", "alice", queries("a")[0]))
    assert run(current.train("c1", "alice", batch("a", update_id="u2"))).total_samples == 9


def test_a_slow_store_never_delays_classify_of_a_loaded_classifier(tmp_path):
    """Every store call takes 0.5 s; classify of an in-memory classifier stays at its unloaded latency while a
    create, a listing and a cold load of another classifier wait on the store."""
    flag = tmp_path / "slow"
    table = ClassifierTable(StateStore(SwitchableSlowStore(tmp_path / "store", flag, delay_s=0.5)), Limits())
    create(table, "hot")
    Xq, _ = queries("ab")

    async def scenario():
        t0 = time.perf_counter()
        await table.classify("hot", "alice", Xq)
        unloaded = time.perf_counter() - t0
        flag.touch()
        busy = [asyncio.ensure_future(table.create(new("bob"), batch("ab", update_id="slow"))),
                asyncio.ensure_future(table.list("alice")),
                asyncio.ensure_future(table.info("cold", "alice", write=False))]
        await asyncio.sleep(0.05)  # they are all waiting on the store now
        t0 = time.perf_counter()
        await table.classify("hot", "alice", Xq)
        loaded = time.perf_counter() - t0
        await asyncio.gather(*busy, return_exceptions=True)
        return unloaded, loaded

    unloaded, loaded = run(scenario())
    assert loaded < unloaded + 0.1, (unloaded, loaded)  # never the 0.5 s of a store call


# -- idempotency keys: same request replays, another request is refused, one in flight is busy -------------------
def keyed(labels, update_id, fingerprint, seed=1):
    """A batch as the few-shot service builds it for a client's Idempotency-Key: its id and its request's print."""
    return dataclasses.replace(batch(labels, seed=seed, update_id=update_id), fingerprint=fingerprint)


def snapshot(table, cid="c1"):
    Xq, _ = queries("abcd")
    (s,) = [s for s in run(table.list("alice")) if s.classifier_id == cid]
    blob = LocalDirStore(table.store.url).read(f"classifiers/{cid}.npz")
    return s.num_samples, s.labels, s.updated_number, run(table.classify(cid, "alice", Xq)).probs.tobytes(), blob


def test_a_key_reused_with_another_request_is_refused_and_changes_nothing(table, tmp_path):
    create(table)
    first = run(table.train("c1", "alice", keyed("c", "k-123", "print-1")))
    before = snapshot(table)
    with pytest.raises(IdempotencyKeyReused) as err:
        run(table.train("c1", "alice", keyed("d", "k-123", "print-2", seed=5)))
    assert (err.value.status, err.value.code) == (422, "INPUT_IDEMPOTENCY_KEY_REUSED")
    after = snapshot(table)
    assert after[:3] == before[:3] and after[3] == before[3] and after[4] == before[4]  # memory and store alike
    again = run(table.train("c1", "alice", keyed("c", "k-123", "print-1")))
    assert again.replayed and (again.num_samples, again.total_samples) == (first.num_samples, first.total_samples)
    # remembered in the stored record: a fresh table (a restarted shard) refuses and replays the same way
    fresh = ClassifierTable(StateStore(LocalDirStore(tmp_path)), table.limits)
    with pytest.raises(IdempotencyKeyReused):
        run(fresh.train("c1", "alice", keyed("d", "k-123", "print-2", seed=5)))
    assert run(fresh.train("c1", "alice", keyed("c", "k-123", "print-1"))).replayed
    assert snapshot(fresh)[:3] == before[:3]


def test_a_create_retried_with_another_body_is_refused_and_creates_nothing(table):
    first = run(table.create(new(), keyed("ab", "k-create", "print-1")))
    assert first.classifier_id == id_for_create("alice", "k-create")
    before = snapshot(table, first.classifier_id)
    with pytest.raises(IdempotencyKeyReused):
        run(table.create(new(), keyed("cd", "k-create", "print-2")))
    assert run(table.store.owned("alice")) == [first.classifier_id] and snapshot(table, first.classifier_id) == before
    assert run(table.create(new(), keyed("ab", "k-create", "print-1"))).replayed
    # the create's key outlives the last RECENT_UPDATES update ids: still a replay, or still a refusal
    for i in range(RECENT_UPDATES + 1):
        run(table.train(first.classifier_id, "alice", keyed("a", f"u{i}", f"p{i}", seed=10 + i)))
    assert "k-create" not in table._loaded[first.classifier_id].recent_updates
    late = run(table.create(new(), keyed("ab", "k-create", "print-1")))
    assert late.replayed and late.num_samples == first.num_samples
    with pytest.raises(IdempotencyKeyReused):
        run(table.create(new(), keyed("cd", "k-create", "print-2")))
    with pytest.raises(IdempotencyKeyReused):  # the create's key on an update of the classifier it made
        run(table.train(first.classifier_id, "alice", keyed("a", "k-create", "print-3")))


def test_a_key_whose_first_request_is_still_running_is_busy(tmp_path):
    flag = tmp_path / "slow"
    table = ClassifierTable(StateStore(SwitchableSlowStore(tmp_path / "store", flag, delay_s=0.4)), Limits())
    create(table)

    async def scenario(first, second):
        flag.touch()  # every store call takes 0.4 s: the first request is mid-write when the second arrives
        task = asyncio.ensure_future(first())
        await asyncio.sleep(0.1)
        try:
            with pytest.raises(IdempotencyKeyInUse) as err:
                await second()
        finally:
            flag.unlink()
        await task
        return err.value

    err = run(scenario(lambda: table.train("c1", "alice", keyed("c", "k", "p")),
                       lambda: table.train("c1", "alice", keyed("c", "k", "p"))))
    assert (err.status, err.code) == (409, "CONFLICT_RESOURCE_BUSY")
    assert run(table.train("c1", "alice", keyed("c", "k", "p"))).replayed  # once it finished: the replay
    assert snapshot(table)[0] == 9  # applied once
    run(scenario(lambda: table.create(new(), keyed("ab", "k2", "p")), lambda: table.create(new(), keyed("cd", "k2", "q"))))
    assert len(run(table.store.owned("alice"))) == 2
    assert not table._inflight  # every mark released


def test_a_batch_without_a_fingerprint_replays_by_id_as_before(table):
    create(table)
    first = run(table.train("c1", "alice", keyed("c", "k", "print-1")))
    assert run(table.train("c1", "alice", batch("c", update_id="k"))).total_samples == first.total_samples
