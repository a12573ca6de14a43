import os

import pytest

from classifiers.store import FsspecStore, LocalDirStore, open_store, owner_key


@pytest.fixture(params=["local", "memory"])
def store(request, tmp_path):
    if request.param == "local":
        return open_store(str(tmp_path / "s"))
    return open_store(f"memory://test-{os.getpid()}-{id(request)}")


def test_roundtrip_list_delete(store):
    assert store.read("classifiers/x.npz") is None
    store.save_classifier("x", b"abc")
    store.save_classifier("x", b"def")
    assert store.load_classifier("x") == b"def"
    store.add_owned("alice", "x", 100.0)
    store.add_owned("alice", "y", 200.5)
    assert store.owned("alice") == ["x", "y"] and store.owned("bob") == []
    assert store.owned_since("alice", "y") == 200.5 and store.owned_since("bob", "y") is None
    store.remove_owned("alice", "y")
    store.delete_classifier("x")
    store.delete_classifier("x")  # idempotent
    assert store.load_classifier("x") is None and store.owned("alice") == ["x"]


def test_owner_names_never_reach_paths():
    assert "/" not in owner_key("../../etc") and len(owner_key("jina_secret_key")) == 32


def test_local_write_is_atomic_replace(tmp_path, monkeypatch):
    store = LocalDirStore(tmp_path)
    store.save_classifier("c", b"old")

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        store.save_classifier("c", b"new-but-crashing")
    assert store.load_classifier("c") == b"old"
    assert [p.name for p in (tmp_path / "classifiers").iterdir()] == ["c.npz"]  # no temp file left behind


def test_keys_cannot_escape_the_root(tmp_path):
    with pytest.raises(ValueError):
        LocalDirStore(tmp_path).write("../evil", b"x")
    with pytest.raises(ValueError):
        FsspecStore("memory://esc").write("a/../../evil", b"x")


def test_open_store_picks_the_backend(tmp_path):
    assert isinstance(open_store(str(tmp_path)), LocalDirStore)
    assert isinstance(open_store(f"file://{tmp_path}"), LocalDirStore)
    assert isinstance(open_store("memory://bucket/prefix"), FsspecStore)
