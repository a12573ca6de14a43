"""Durable storage of classifier state: write-through, atomic replace, any fsspec URL.

Layout under the store root:
  classifiers/<classifier_id>.npz   the learner's sufficient statistics + metadata, one atomic object
  owners/<owner_key>/<classifier_id> markers holding the reservation time: an owner's classifiers (limit, listing)
  usage/<classifier_id>.json        use counters, flushed lazily (losing a few on a crash is harmless)

A local directory (default) writes a temp file in the same directory, fsyncs it and ``os.replace``s it, so a
crash mid-write leaves either the old or the new file, never a half-written one. Object stores (s3://, gs://,
az://) replace whole objects atomically on PUT; other fsspec filesystems get write-to-temp-then-move.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path


def owner_key(owner: str) -> str:
    """Owners may be API keys: never put them in paths, use a digest."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


class StateStore(ABC):
    url: str

    @abstractmethod
    def read(self, key: str) -> bytes | None: ...

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Atomically replace `key` with `data`; durable when this returns."""

    @abstractmethod
    def delete(self, key: str) -> None: ...

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Names directly under the folder `prefix` (no recursion)."""

    # Typed helpers over the raw keys.
    def load_classifier(self, cid: str) -> bytes | None:
        return self.read(f"classifiers/{cid}.npz")

    def save_classifier(self, cid: str, blob: bytes) -> None:
        self.write(f"classifiers/{cid}.npz", blob)

    def delete_classifier(self, cid: str) -> None:
        self.delete(f"classifiers/{cid}.npz")
        self.delete(f"usage/{cid}.json")

    def owned(self, owner: str) -> list[str]:
        return sorted(self.list(f"owners/{owner_key(owner)}"))

    def add_owned(self, owner: str, cid: str, at: float) -> None:
        self.write(f"owners/{owner_key(owner)}/{cid}", repr(at).encode())

    def owned_since(self, owner: str, cid: str) -> float | None:
        """When the reservation was made (None: no reservation)."""
        raw = self.read(f"owners/{owner_key(owner)}/{cid}")
        if raw is None:
            return None
        try:
            return float(raw.decode() or 0)
        except ValueError:
            return 0.0

    def remove_owned(self, owner: str, cid: str) -> None:
        self.delete(f"owners/{owner_key(owner)}/{cid}")


class LocalDirStore(StateStore):
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"store key {key!r} escapes the store root")
        return path

    def read(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> list[str]:
        folder = self._path(prefix)
        if not folder.is_dir():
            return []
        return [p.name for p in folder.iterdir() if not p.name.startswith(".")]


class FsspecStore(StateStore):
    """Any fsspec URL (s3://bucket/path, gs://..., memory://...); install the matching fsspec backend."""

    ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}

    def __init__(self, url: str, **storage_options):
        import fsspec

        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._atomic = bool(set(protocols) & self.ATOMIC_PUT)

    def _p(self, key: str) -> str:
        if ".." in key.split("/"):
            raise ValueError(f"store key {key!r} escapes the store root")
        return f"{self.root}/{key}"

    def read(self, key: str) -> bytes | None:
        try:
            with self.fs.open(self._p(key), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def write(self, key: str, data: bytes) -> None:
        path = self._p(key)
        if self._atomic:
            self.fs.pipe_file(path, data)
            return
        folder, name = path.rsplit("/", 1)
        tmp = f"{folder}/.{name}.{os.getpid()}.tmp"  # hidden: never listed as a classifier or an owned id
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

    def delete(self, key: str) -> None:
        try:
            self.fs.rm(self._p(key))
        except FileNotFoundError:
            pass

    def list(self, prefix: str) -> list[str]:
        try:
            entries = self.fs.ls(self._p(prefix), detail=False)
        except FileNotFoundError:
            return []
        return [e.rstrip("/").rsplit("/", 1)[-1] for e in entries if not e.rsplit("/", 1)[-1].startswith(".")]


def open_store(url: str) -> StateStore:
    """A plain path or file:// URL -> LocalDirStore; anything else -> FsspecStore."""
    if "://" not in url:
        return LocalDirStore(url)
    if url.startswith("file://"):
        return LocalDirStore(url[len("file://") :])
    return FsspecStore(url)
