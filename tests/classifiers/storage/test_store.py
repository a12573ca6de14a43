import asyncio
import os

import pytest

from classifiers.protocol.errors import StaleWriter
from classifiers.storage.store import FsspecStore, LocalDirStore, StateStore, open_blob_store, owner_key
from tests.slow_store import SwitchableSlowStore


def run(coro):
    return asyncio.run(coro)


@pytest.fixture(params=["local", "memory"])
def blobs(request, tmp_path):
    if request.param == "local":
        return open_blob_store(str(tmp_path / "s"))
    return open_blob_store(f"memory://test-{os.getpid()}-{id(request)}")


def test_roundtrip_list_delete(blobs):
    store = StateStore(blobs)

    async def scenario():
        assert await store.load_classifier("x") is None
        await store.save_classifier("x", b"abc")
        await store.save_classifier("x", b"def")
        assert await store.load_classifier("x") == b"def"
        await store.add_owned("alice", "x", 100.0)
        await store.add_owned("alice", "y", 200.5)
        assert await store.owned("alice") == ["x", "y"] and await store.owned("bob") == []
        assert await store.owned_since("alice", "y") == 200.5 and await store.owned_since("bob", "y") is None
        await store.write_usage({"x": {"used_number": 3, "used_at": 1.0}})
        assert await store.read_usage("x") == {"used_number": 3, "used_at": 1.0}
        await store.remove_owned("alice", "y")
        await store.delete_classifier("x", "alice")
        await store.delete_classifier("x", "alice")  # idempotent
        assert await store.load_classifier("x") is None and await store.owned("alice") == []
        assert await store.read_usage("x") is None

    run(scenario())


def test_fence_refuses_writers_of_a_replaced_set_and_older_deploys(blobs):
    old, new = StateStore(blobs, writer="set-a"), StateStore(blobs, writer="set-b")

    async def scenario():
        await old.claim("set-a", generation=1)
        await old.save_classifier("c", b"v1")  # the claimed set writes
        await new.claim("set-b", generation=2)  # a newer deploy with another shard set takes the store
        for write in (old.save_classifier("c", b"lost"), old.add_owned("o", "c", 1.0), old.delete_classifier("c", "o"),
                      old.write_usage({"c": {"used_number": 1, "used_at": 1.0}})):
            with pytest.raises(StaleWriter):
                await write
        with pytest.raises(StaleWriter):
            await old.check_fence()
        assert await new.load_classifier("c") == b"v1"  # nothing the stale writer tried landed
        await new.save_classifier("c", b"v2")
        with pytest.raises(StaleWriter, match="older"):
            await old.claim("set-a", generation=1)  # an old replica restarting cannot take the store back
        await new.claim("set-b", generation=3)  # a newer deploy of the same set is fine
        assert (await new.fence()).generation == 3
        assert await StateStore(blobs).load_classifier("c") == b"v2"

    run(scenario())


def test_store_calls_never_block_the_event_loop(tmp_path):
    """A store whose every call takes 0.5 s: the loop keeps ticking while calls wait in the store's threads."""

    (tmp_path / "slow").touch()
    store = StateStore(SwitchableSlowStore(tmp_path / "store", tmp_path / "slow", delay_s=0.5))

    async def scenario():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.ensure_future(ticker())
        await asyncio.gather(*(store.load_classifier(f"c{i}") for i in range(4)))
        task.cancel()
        return ticks

    assert run(scenario()) >= 20  # ~50 ticks in 0.5 s; a blocked loop would give ~0


def test_owner_names_never_reach_paths():
    assert "/" not in owner_key("../../etc") and len(owner_key("jina_secret_key")) == 32


def test_local_write_is_atomic_replace(tmp_path, monkeypatch):
    blobs = LocalDirStore(tmp_path)
    blobs.write("classifiers/c.npz", b"old")

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        blobs.write("classifiers/c.npz", b"new-but-crashing")
    assert blobs.read("classifiers/c.npz") == b"old"
    assert [p.name for p in (tmp_path / "classifiers").iterdir()] == ["c.npz"]  # no temp file left behind


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(ValueError):
        LocalDirStore(tmp_path).write("../evil", b"x")
    with pytest.raises(ValueError):
        FsspecStore("memory://esc").write("a/../../evil", b"x")


def test_open_blob_store_picks_the_backend_and_pickles(tmp_path):
    import pickle

    assert isinstance(open_blob_store(str(tmp_path)), LocalDirStore)
    assert isinstance(open_blob_store(f"file://{tmp_path}"), LocalDirStore)
    mem = open_blob_store("memory://bucket/prefix")
    assert isinstance(mem, FsspecStore)
    assert pickle.loads(pickle.dumps(LocalDirStore(tmp_path))).url == str(tmp_path.resolve())
    assert pickle.loads(pickle.dumps(mem)).url == mem.url


# --------------------------------------------------------------------------------------- failures and crash debris


def test_a_broken_store_answers_a_retryable_503_and_keeps_what_it_had(tmp_path):
    """Real broken paths, not mocks: a file where the owner index's directory must be, and a directory where a
    classifier's file must be. Every call that touches them is a 503 SERVICE_UNAVAILABLE that names the kind of
    failure but no path; what the store held is intact and no temp file is left; once repaired, it works again."""
    import shutil

    from classifiers.protocol.errors import ServiceUnavailable

    root = tmp_path / "s"
    store = StateStore(LocalDirStore(root))
    run(store.save_classifier("c1", b"v1"))
    (root / "owners").write_bytes(b"")
    (root / "classifiers" / "c2.npz").mkdir()
    (root / "classifiers" / "c2.npz" / "x").write_bytes(b"")
    calls = {
        "add_owned": store.add_owned("alice", "c1", 1.0), "owned": store.owned("alice"),
        "owned_since": store.owned_since("alice", "c1"), "save": store.save_classifier("c2", b"v2"),
        "load": store.load_classifier("c2"), "delete": store.delete_classifier("c2", "alice"),
    }
    for name, call in calls.items():
        with pytest.raises(ServiceUnavailable) as info:
            run(call)
        err = info.value
        assert (err.status, err.code) == (503, "SERVICE_UNAVAILABLE"), name
        assert err.detail.startswith("the classifier store is unavailable (") and "retry" in err.detail, err.detail
        assert str(tmp_path) not in err.detail
    assert run(store.load_classifier("c1")) == b"v1"
    assert sorted(p.name for p in (root / "classifiers").iterdir()) == ["c1.npz", "c2.npz"]  # no temp files
    (root / "owners").unlink()
    shutil.rmtree(root / "classifiers" / "c2.npz")
    run(store.add_owned("alice", "c2", 2.0))
    run(store.save_classifier("c2", b"v2"))
    assert run(store.owned("alice")) == ["c2"] and run(store.load_classifier("c2")) == b"v2"


FULL_DISK = r"""
import asyncio, os, resource, signal, sys
from classifiers.protocol.errors import ServiceUnavailable
from classifiers.storage.store import LocalDirStore, StateStore

root = sys.argv[1]
store = StateStore(LocalDirStore(root))
asyncio.run(store.save_classifier("c1", b"v1" * 1000))
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk's ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
try:
    asyncio.run(store.save_classifier("c1", b"x" * 1_000_000))
    print("no error")
except ServiceUnavailable as e:
    print(e.status, e.code, e.detail)
print(asyncio.run(store.load_classifier("c1")) == b"v1" * 1000)
print(sorted(os.listdir(os.path.join(root, "classifiers"))))
"""


def test_a_write_the_disk_cannot_take_is_a_503_and_the_old_version_stays(tmp_path):
    """A real failing write (the file-size limit of a child process: EFBIG mid-write, as a full disk gives
    ENOSPC): 503, the previous version is still what the store holds, and the temp file is gone."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    out = subprocess.run(
        [sys.executable, "-c", FULL_DISK, str(tmp_path / "s")], cwd=repo, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(repo)}, timeout=120,
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "503 SERVICE_UNAVAILABLE the classifier store is unavailable (OSError EFBIG); retry later", lines
    assert lines[1:] == ["True", "['c1.npz']"]


def test_a_store_failure_during_train_is_a_503_and_the_classifier_is_unchanged(tmp_path):
    """Through the classifier state: an update that meets a broken store is a 503 and changes nothing (neither
    the stored classifier nor what the table serves); after the repair the retry of the same update applies once."""
    import shutil

    import numpy as np

    from classifiers.fewshot.repository import NewClassifier, TrainBatch
    from classifiers.fewshot.table import ClassifierTable
    from classifiers.protocol.errors import ServiceUnavailable
    from classifiers.request.limits import Limits

    rng = np.random.default_rng(0)

    def batch(labels, update_id):
        X = rng.normal(size=(2 * len(labels), 8))
        return TrainBatch(X / np.linalg.norm(X, axis=1, keepdims=True), [lab for lab in labels for _ in range(2)], 1.0,
                          update_id=update_id)

    root = tmp_path / "s"
    table = ClassifierTable(StateStore(LocalDirStore(root)), Limits())
    run(table.create(NewClassifier("alice", "m", "private", 8, 30.0), batch("ab", "u0"), classifier_id="c1"))
    blob = root / "classifiers" / "c1.npz"
    saved = blob.read_bytes()
    blob.rename(root / "c1.backup")
    blob.mkdir()  # the store is broken where the classifier lives
    (blob / "x").write_bytes(b"")
    fresh = ClassifierTable(StateStore(LocalDirStore(root)), Limits())  # a restarted shard: must read the store
    for t in (table, fresh):
        with pytest.raises(ServiceUnavailable):
            run(t.train("c1", "alice", batch("c", "u1")))
    shutil.rmtree(blob)
    (root / "c1.backup").rename(blob)
    assert blob.read_bytes() == saved
    assert run(table.list("alice"))[0].labels == ["a", "b"]
    out = run(table.train("c1", "alice", batch("c", "u1")))
    again = run(table.train("c1", "alice", batch("c", "u1")))  # the client's retry of the acknowledged update
    assert out.total_samples == again.total_samples == 6 and again.labels == ["a", "b", "c"]


def test_opening_a_local_store_sweeps_temp_files_left_by_crashed_writers(tmp_path):
    """A crash between writing the temp file and os.replace leaves a hidden `.<name>.<random>.tmp`; the next open
    deletes those older than a minute anywhere in the store, and keeps a young one: another process may be
    writing it right now."""
    import time

    root = tmp_path / "s"
    LocalDirStore(root).write("classifiers/c1.npz", b"v1")
    old = [root / "classifiers" / ".c1.npz.k2j3h4.tmp", root / "owners" / "abc" / ".c9.x1y2.tmp", root / ".fence.json.q.tmp"]
    young = root / "usage" / ".c1.json.zz9.tmp"
    for path in old + [young]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half-written")
    for path in old:
        os.utime(path, (time.time() - 120, time.time() - 120))
    kept = [root / "classifiers" / "c1.npz", root / ".lock", root / "owners" / "abc" / "c9.tmp"]
    for path in kept[1:]:
        path.write_bytes(b"")
        os.utime(path, (time.time() - 120, time.time() - 120))

    store = LocalDirStore(root)
    assert store.swept == 3
    assert [p.exists() for p in old] == [False] * 3 and young.exists() and all(p.exists() for p in kept)
    assert store.read("classifiers/c1.npz") == b"v1"
    assert LocalDirStore(root).swept == 0
