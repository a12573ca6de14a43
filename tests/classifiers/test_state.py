"""ClassifierBook: the pure logic of a state shard (access rules, no partial update, persistence)."""
import asyncio

import numpy as np
import pytest

from classifiers.errors import LabelLimitExceeded, ResourceLimitExceeded, ResourceNotFound
from classifiers.limits import Limits
from classifiers.state import ClassifierBook, ClassifierRecord
from classifiers.store import LocalDirStore

D = 16
rng = np.random.default_rng(0)
CENTERS = {lab: rng.normal(size=D) for lab in "abcdefghijklmnopqrstuvwxyz"}


def batch(labels, n=3, seed=1):
    r = np.random.default_rng(seed)
    X, y = [], []
    for lab in labels:
        for _ in range(n):
            v = CENTERS[lab] + 0.3 * r.normal(size=D)
            X.append(v / np.linalg.norm(v))
            y.append(lab)
    return np.array(X), y


def priors(labels):
    return {lab: CENTERS[lab] / np.linalg.norm(CENTERS[lab]) for lab in labels}


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def book(tmp_path):
    return ClassifierBook(LocalDirStore(tmp_path), Limits(max_classes=4, max_classifiers_per_owner=2))


def create(book, cid="c1", owner="alice", access="private", labels="ab"):
    X, y = batch(labels)
    return run(book.create(cid, owner, "m", access, dim=D, score_scale=30.0, X=X, y=y, weight=1.0,
                           label_vectors=priors(set(y)), update_id=f"create-{cid}"))


def test_create_train_classify_and_reload_from_store(book, tmp_path):
    out = create(book)
    assert out.num_samples == 6 and out.labels == ["a", "b"]
    X, y = batch("c", seed=2)
    out = run(book.train("c1", "alice", X=X, y=y, weight=1.0, label_vectors=priors({"c"}), update_id="u1"))
    assert out.num_samples == 3 and out.total_samples == 9 and out.labels == ["a", "b", "c"]
    Xq, yq = batch("abc", n=2, seed=9)
    labels, probs = run(book.classify("c1", "alice", Xq))
    assert [labels[i] for i in probs.argmax(1)] == yq
    fresh = ClassifierBook(LocalDirStore(tmp_path), book.limits)  # a restarted shard
    labels2, probs2 = run(fresh.classify("c1", "alice", Xq))
    assert labels2 == labels and np.array_equal(probs2, probs)


def test_private_is_invisible_and_public_is_classify_only(book):
    create(book, "priv", access="private")
    create(book, "pub", access="public")
    Xq, _ = batch("a", n=1)
    with pytest.raises(ResourceNotFound):
        run(book.classify("priv", "mallory", Xq))
    run(book.classify("pub", "mallory", Xq))  # anyone with the id may classify
    for call in (
        lambda: book.info("pub", "mallory", True),
        lambda: book.train("pub", "mallory", X=Xq, y=["a"], weight=1.0, label_vectors={}, update_id="x"),
        lambda: book.delete("pub", "mallory"),
    ):
        with pytest.raises(ResourceNotFound):
            run(call())
    assert run(book.summary("pub", "mallory")) is None
    with pytest.raises(ResourceNotFound):
        run(book.classify("missing", "alice", Xq))


def test_class_limit_refusal_changes_nothing(book, tmp_path):
    create(book, labels="abc")
    before = LocalDirStore(tmp_path).load_classifier("c1")
    X, y = batch("de")
    with pytest.raises(LabelLimitExceeded, match="5 labels"):
        run(book.train("c1", "alice", X=X, y=y, weight=1.0, label_vectors=priors(set(y)), update_id="u"))
    assert LocalDirStore(tmp_path).load_classifier("c1") == before
    assert run(book.info("c1", "alice", False)).labels == ["a", "b", "c"]


def test_store_failure_leaves_memory_and_disk_unchanged(book, tmp_path, monkeypatch):
    create(book)
    Xq, _ = batch("ab", n=2, seed=5)
    _, before = run(book.classify("c1", "alice", Xq))

    def broken(cid, blob):
        raise OSError("store down")

    monkeypatch.setattr(book.store, "save_classifier", broken)
    X, y = batch("b", seed=3)
    with pytest.raises(OSError):
        run(book.train("c1", "alice", X=X, y=y, weight=5.0, label_vectors={}, update_id="u"))
    _, after = run(book.classify("c1", "alice", Xq))
    assert np.array_equal(before, after)


def test_retried_update_is_applied_once(book):
    create(book)
    X, y = batch("a", seed=4)
    first = run(book.train("c1", "alice", X=X, y=y, weight=1.0, label_vectors={}, update_id="same"))
    again = run(book.train("c1", "alice", X=X, y=y, weight=1.0, label_vectors={}, update_id="same"))
    assert first.total_samples == again.total_samples == 9


def test_owner_limit_and_release(book):
    run(book.reserve("alice", "c1"))
    run(book.reserve("alice", "c1"))  # a retried reservation is not counted twice
    run(book.reserve("alice", "c2"))
    with pytest.raises(ResourceLimitExceeded, match="limit: 2"):
        run(book.reserve("alice", "c3"))
    run(book.release("alice", "c1"))
    run(book.reserve("alice", "c3"))
    assert run(book.owned("alice")) == ["c2", "c3"]


def test_concurrent_updates_are_serialised(book):
    create(book)

    async def many():
        tasks = []
        for i in range(16):
            X, y = batch("ab", n=1, seed=100 + i)
            tasks.append(book.train("c1", "alice", X=X, y=y, weight=1.0, label_vectors={}, update_id=f"u{i}"))
        return await asyncio.gather(*tasks)

    run(many())
    assert run(book.summary("c1", "alice"))["num_samples"] == 6 + 32


def test_state_holds_no_examples_and_survives_bytes(book):
    create(book)
    blob = book.store.load_classifier("c1")
    again = ClassifierRecord.from_bytes(blob)
    assert again.summary()["labels"] == ["a", "b"] and again.num_samples == 6
    X1, y1 = batch("ab", n=50, seed=7)
    big = ClassifierBook(book.store, book.limits)
    run(big.create("c9", "bob", "m", "private", dim=D, score_scale=30.0, X=X1, y=y1, weight=1.0,
                   label_vectors=priors(set(y1)), update_id="z"))
    assert len(big.store.load_classifier("c9")) == pytest.approx(len(blob), rel=0.05)
    assert big._loaded["c9"].learner is None  # in memory: only the compiled predictor  # 100 vs 6 examples: same size


def test_usage_counters_flush_and_eviction_keeps_them(tmp_path):
    book = ClassifierBook(LocalDirStore(tmp_path), Limits(), capacity=1)
    create(book, "c1")
    Xq, _ = batch("a", n=1)
    run(book.classify("c1", "alice", Xq))
    create(book, "c2")  # evicts c1, flushing its counters
    assert run(book.summary("c1", "alice"))["used_number"] == 1


def test_only_stale_reservations_are_released(tmp_path):
    now = [1000.0]
    book = ClassifierBook(LocalDirStore(tmp_path), Limits(), clock=lambda: now[0])
    run(book.reserve("alice", "in-flight"))
    run(book.release_stale("alice", "in-flight"))  # a create may still be running: keep it
    assert run(book.owned("alice")) == ["in-flight"]
    now[0] += 3600
    run(book.release_stale("alice", "in-flight"))
    assert run(book.owned("alice")) == []


def test_unknown_ids_leave_no_locks_behind(book):
    for i in range(50):
        with pytest.raises(ResourceNotFound):
            run(book.delete(f"missing-{i}", "alice"))
        with pytest.raises(ResourceNotFound):
            run(book.train(f"missing-{i}", "alice", X=np.zeros((1, D)), y=["a"], weight=1.0, label_vectors={}, update_id="u"))
    create(book)
    run(book.delete("c1", "alice"))
    assert book._locks == {}
