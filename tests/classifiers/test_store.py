import asyncio
import os

import pytest

from classifiers.errors import StaleWriter
from classifiers.store import FsspecStore, LocalDirStore, StateStore, open_blob_store, owner_key
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
