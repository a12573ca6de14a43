"""Durable storage of classifier state: write-through, atomic replace, any fsspec URL, fenced writers.

Two layers:

* :class:`BlobStore` (sync): atomic key -> bytes over a local directory (:class:`LocalDirStore`) or any fsspec
  URL (:class:`FsspecStore`). Blocking I/O; never called from an event loop directly.
* :class:`StateStore` (async): the typed operations the classifier state needs (classifier blobs, the owner
  index, usage counters, the writer fence), each run in the store's own bounded thread pool, so a slow disk or
  object store never blocks an event loop, and never takes threads from the default executor that model and
  decoding work use.

Layout under the store root::

  classifiers/<classifier_id>.npz   the learner's sufficient statistics + metadata, one atomic object
  owners/<owner_key>/<classifier_id> markers holding the reservation time: an owner's classifiers (limit, listing)
  usage/<classifier_id>.json        use counters, flushed lazily (losing a few on a crash is harmless)
  fence.json                        which shard set may write, and the deploy generation that claimed it

**Fencing.** Exactly one *shard set* (named by store URL and shard count) may write a store. A deploy claims
the store with a generation (its deploy time): a claim with an older generation than the recorded one is
refused, so an old replica restarted during a rolling update cannot take the store back. Every write checks
the fence first and raises :class:`~classifiers.protocol.errors.StaleWriter` (a retryable 503) when another set owns the
store. On a local directory the check and the write happen under one ``flock``, so they are atomic across
processes; on object stores the check is a read right before the write (a window of one round trip, narrowed
further by the shards' periodic fence check).

A local directory writes a temp file in the same directory, fsyncs it and ``os.replace``s it, so a crash
mid-write leaves either the old or the new file, never a half-written one (plus, at worst, an orphaned hidden
temp file, which the next :class:`LocalDirStore` to open the directory sweeps once it is a minute old). Object
stores (s3://, gs://, az://) replace whole objects atomically on PUT; other fsspec filesystems get
write-to-temp-then-move.

**Failures.** A store that fails (full disk, read-only or broken directory, unreachable object store: an
``OSError`` or a filesystem library's error) makes the :class:`StateStore` call raise
:class:`~classifiers.protocol.errors.ServiceUnavailable`, a retryable 503, with the real error in the server log. Every
write is atomic and the classifier state swaps a record in only after its write succeeded, so a failed call
leaves the stored and in-memory state as they were; the retry finds them consistent.
"""
from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from classifiers.protocol.errors import ServiceError, ServiceUnavailable, StaleWriter

logger = logging.getLogger("ray.serve")

T = TypeVar("T")
FENCE_KEY = "fence.json"
ANONYMOUS_OWNER = "00000000-0000-4000-8000-000000000000"  # anonymous mode's one account (Jina: user_id is a UUID)
TEMP_FILE = re.compile(r"^\..+\.tmp$")  # LocalDirStore's (and FsspecStore's) in-flight writes: hidden, *.tmp
STALE_TEMP_S = 60.0  # a temp file older than this belongs to a crashed writer (a live write takes milliseconds)
# Top-level packages of fsspec and its backends: their own exception types (not OSError) mean the store failed.
STORE_LIBRARIES = frozenset(
    {"fsspec", "s3fs", "gcsfs", "adlfs", "botocore", "aiobotocore", "boto3", "aiohttp", "google", "azure",
     "requests", "urllib3"}
)


def is_store_failure(error: BaseException) -> bool:
    """Whether ``error`` from a blob store means the store itself failed (retry later), not a bug or a bad key."""
    if isinstance(error, ServiceError):
        return False
    if isinstance(error, OSError):  # ENOSPC, EROFS, EACCES, EIO, ENOTDIR, connection errors, timeouts ...
        return True
    return type(error).__module__.split(".", 1)[0] in STORE_LIBRARIES


def store_unavailable(url: str, error: BaseException) -> ServiceUnavailable:
    """The retryable 503 for a failed store call; the detail names the kind of failure, never paths or URLs (the
    server log has the whole error)."""
    logger.warning("classifier store %s failed: %s: %s", url, type(error).__name__, error)
    name = errno.errorcode.get(getattr(error, "errno", None) or 0)
    kind = f"{type(error).__name__}{f' {name}' if name else ''}"
    return ServiceUnavailable(f"the classifier store is unavailable ({kind}); retry later")


def owner_key(owner: str) -> str:
    """Owners may one day be derived from secrets: never put them in paths, use a digest."""
    return hashlib.sha256(owner.encode()).hexdigest()[:32]


class BlobStore(ABC):
    """Atomic key -> bytes storage. Blocking: :class:`StateStore` runs it off the event loop."""

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

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the store's cross-process write lock (where the backend has one): fence check + write."""
        yield


class LocalDirStore(BlobStore):
    """A local (or network-mounted) directory. Opening it sweeps temp files that crashed writers left behind
    (:meth:`sweep_temp_files`), so they do not accumulate across restarts."""

    def __init__(self, root: str | os.PathLike, *, stale_temp_s: float = STALE_TEMP_S):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.url = str(self.root)
        self._thread_lock = threading.Lock()  # flock is per open file: serialise this process's threads too
        self.stale_temp_s = stale_temp_s
        self.swept = self.sweep_temp_files(stale_temp_s)

    def sweep_temp_files(self, older_than_s: float = STALE_TEMP_S) -> int:
        """Delete temp files (``.<name>.<random>.tmp``) older than ``older_than_s`` anywhere under the root; returns
        how many. Only old ones: another process may be writing into the same store right now, and its temp file
        is seconds old at most. Never fails the open (a read-only store is still readable): problems are logged."""
        cutoff = time.time() - older_than_s
        removed = 0
        try:
            for folder, _, files in os.walk(self.root):
                for name in files:
                    if not TEMP_FILE.match(name):
                        continue
                    path = os.path.join(folder, name)
                    try:
                        if os.lstat(path).st_mtime < cutoff:
                            os.unlink(path)
                            removed += 1
                    except FileNotFoundError:  # another process swept it first
                        continue
        except OSError as e:
            logger.warning("store %s: could not sweep temp files: %s", self.url, e)
        if removed:
            logger.info("store %s: removed %d temp file(s) left by interrupted writes", self.url, removed)
        return removed

    def __getstate__(self):  # picklable (shard actors get their store as an argument)
        return {"root": self.root, "stale_temp_s": self.stale_temp_s}

    def __setstate__(self, state):
        type(self).__init__(self, state["root"], stale_temp_s=state.get("stale_temp_s", STALE_TEMP_S))

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
        try:
            return [p.name for p in folder.iterdir() if not p.name.startswith(".")]
        except FileNotFoundError:  # nothing written under it yet; a broken path (ENOTDIR, EIO ...) raises: not "empty"
            return []

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._thread_lock, open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


class FsspecStore(BlobStore):
    """Any fsspec URL (s3://bucket/path, gs://..., memory://...); install the matching fsspec backend."""

    ATOMIC_PUT = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "memory"}

    def __init__(self, url: str, **storage_options):
        import fsspec

        self.url = url.rstrip("/")
        self._storage_options = storage_options
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **storage_options)
        protocols = self.fs.protocol if isinstance(self.fs.protocol, (tuple, list)) else (self.fs.protocol,)
        self._atomic = bool(set(protocols) & self.ATOMIC_PUT)

    def __getstate__(self):
        return {"url": self.url, "storage_options": self._storage_options}

    def __setstate__(self, state):
        type(self).__init__(self, state["url"], **state["storage_options"])

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


def open_blob_store(url: str) -> BlobStore:
    """A plain path or file:// URL -> LocalDirStore; anything else -> FsspecStore."""
    if "://" not in url:
        return LocalDirStore(url)
    if url.startswith("file://"):
        return LocalDirStore(url[len("file://") :])
    return FsspecStore(url)


@dataclass(frozen=True)
class Fence:
    """Who may write a store: a shard set's name, and the deploy generation that claimed it."""

    writer: str
    generation: int


class StateStore:
    """The async, typed store the classifier state uses; every call runs in this store's own thread pool.

    ``writer`` names the shard set this process belongs to; with a writer set, every write is fenced (see the
    module docstring). ``writer=None`` (tools, single-process use) writes unfenced.
    """

    def __init__(self, blobs: BlobStore, *, writer: str | None = None, io_threads: int = 8):
        self.blobs = blobs
        self.writer = writer
        self._pool = ThreadPoolExecutor(max_workers=io_threads, thread_name_prefix="state-store")

    @property
    def url(self) -> str:
        return self.blobs.url

    async def _run(self, fn: Callable[..., T], *args) -> T:
        """Run a blocking store call in this store's pool; a failing store raises ServiceUnavailable (503)."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except Exception as e:
            if is_store_failure(e):
                raise store_unavailable(self.url, e) from e
            raise

    # -- fencing --------------------------------------------------------------------------------------------
    def _fence(self) -> Fence | None:
        raw = self.blobs.read(FENCE_KEY)
        if not raw:
            return None
        data = json.loads(raw)
        return Fence(data["writer"], int(data["generation"]))

    def _check_fence(self) -> None:
        if self.writer is None:
            return
        fence = self._fence()
        if fence is not None and fence.writer != self.writer:
            raise StaleWriter(
                f"this shard set ({self.writer}) was replaced by {fence.writer} (generation {fence.generation}); "
                "retry: the request will reach the current set"
            )

    def _fenced(self, fn: Callable[..., T], *args) -> T:
        with self.blobs.exclusive():
            self._check_fence()
            return fn(*args)

    def _claim(self, writer: str, generation: int) -> Fence:
        with self.blobs.exclusive():
            fence = self._fence()
            if fence is not None and fence.generation > generation:
                if fence.writer == writer:
                    return fence  # a newer deploy of the same set: nothing to change
                raise StaleWriter(
                    f"shard set {writer} (generation {generation}) is older than the store's current writer "
                    f"{fence.writer} (generation {fence.generation}); this deployment has been replaced"
                )
            if fence != Fence(writer, generation):
                self.blobs.write(FENCE_KEY, json.dumps({"writer": writer, "generation": generation}).encode())
            return Fence(writer, generation)

    async def claim(self, writer: str, generation: int) -> Fence:
        """Make `writer` the store's only writer, unless a newer generation already claimed it (StaleWriter)."""
        return await self._run(self._claim, writer, generation)

    async def fence(self) -> Fence | None:
        return await self._run(self._fence)

    async def check_fence(self) -> None:
        """Raise StaleWriter if this store's writer is no longer the one the fence names."""
        await self._run(self._check_fence)

    def check_fence_now(self) -> None:
        """The same, blocking: for constructors, before any event loop work."""
        try:
            self._check_fence()
        except Exception as e:
            if is_store_failure(e):
                raise store_unavailable(self.url, e) from e
            raise

    # -- classifiers ----------------------------------------------------------------------------------------
    async def load_classifier(self, cid: str) -> bytes | None:
        return await self._run(self.blobs.read, f"classifiers/{cid}.npz")

    async def save_classifier(self, cid: str, blob: bytes) -> None:
        await self._run(self._fenced, self.blobs.write, f"classifiers/{cid}.npz", blob)

    def _delete_classifier(self, cid: str, owner: str) -> None:
        self.blobs.delete(f"classifiers/{cid}.npz")
        self.blobs.delete(f"usage/{cid}.json")
        self.blobs.delete(f"owners/{owner_key(owner)}/{cid}")

    async def delete_classifier(self, cid: str, owner: str) -> None:
        """The classifier, its counters and its owner-index entry (last: a crash in between leaves a marker
        without a classifier, which listing drops, never a classifier its owner cannot see)."""
        await self._run(self._fenced, self._delete_classifier, cid, owner)

    # -- the owner index ------------------------------------------------------------------------------------
    async def owned(self, owner: str) -> list[str]:
        return sorted(await self._run(self.blobs.list, f"owners/{owner_key(owner)}"))

    async def add_owned(self, owner: str, cid: str, at: float) -> None:
        await self._run(self._fenced, self.blobs.write, f"owners/{owner_key(owner)}/{cid}", repr(at).encode())

    async def remove_owned(self, owner: str, cid: str) -> None:
        await self._run(self._fenced, self.blobs.delete, f"owners/{owner_key(owner)}/{cid}")

    async def owned_since(self, owner: str, cid: str) -> float | None:
        """When the reservation was made (None: no reservation)."""
        raw = await self._run(self.blobs.read, f"owners/{owner_key(owner)}/{cid}")
        if raw is None:
            return None
        try:
            return float(raw.decode() or 0)
        except ValueError:
            return 0.0

    # -- usage counters -------------------------------------------------------------------------------------
    async def read_usage(self, cid: str) -> dict | None:
        raw = await self._run(self.blobs.read, f"usage/{cid}.json")
        return json.loads(raw) if raw else None

    def _write_usage(self, counters: dict[str, dict]) -> None:
        for cid, usage in counters.items():
            self.blobs.write(f"usage/{cid}.json", json.dumps(usage).encode())

    async def write_usage(self, counters: dict[str, dict]) -> None:
        """Several classifiers' counters in one trip to the pool (one fence check)."""
        if counters:
            await self._run(self._fenced, self._write_usage, counters)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
