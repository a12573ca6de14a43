"""API keys and accounts: the key format, what the store holds, and who a request is. No Ray.

A key looks like ``rck_<key id>_<secret>``: ``rck_`` says what it is (secret scanners and people can spot
one), the 12-hex-digit key id names it in listings, logs and the ledger (it is not secret), and the secret is
32 random bytes (256 bits, URL-safe base64). The store keeps only ``sha256(key)``: keys are random, so a slow
KDF adds nothing, and a leaked store reveals no usable key. Verification compares digests in constant time.

Store layout (in the same store as the classifier state, under ``accounts/``)::

  accounts/keys/<key id>.json      the key's record: account UUID, name, tier, admin, balance, revoked_at, hash
  accounts/ledger/<subject>.json   tokens and requests used, per mode (classifiers/accounts/usage.py)

Keys are written by the admin command (``./scripts/keys``), never by the service; ingress replicas re-read a
key's record at most every ``key_cache_ttl_s``, so a new key works and a revoked one stops within that time.
"""
from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import ipaddress
import json
import logging
import re
import secrets
import time
import uuid
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from classifiers.protocol.errors import (
    InvalidApiKey,
    InvalidAuthFormat,
    LocalClientsOnly,
    MissingApiKey,
    ServiceUnavailable,
)
from classifiers.storage.store import ANONYMOUS_OWNER, BlobStore

T = TypeVar("T")
logger = logging.getLogger("ray.serve")
KEY_PREFIX = "rck"
KEY_PATTERN = re.compile(rf"{KEY_PREFIX}_([0-9a-f]{{12}})_([A-Za-z0-9_-]{{43}})")
KEY_ID_PATTERN = re.compile(r"[0-9a-f]{12}")
ANONYMOUS_SUBJECT = "anonymous"  # the ledger's name for anonymous mode's one account


def new_key() -> tuple[str, str]:
    """(key id, full key). The only place a key exists in clear is this return value."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRecord(BaseModel):
    """What the store knows about a key: never the key itself."""

    model_config = ConfigDict(extra="ignore")

    key_id: str = Field(description="Public identifier of the key (in the key after `rck_`).")
    name: str = Field(description="Who or what the key is for (set by the admin).")
    account_id: str = Field(description="The account (UUID) the key acts as: owner of what it creates.")
    tier: str = Field(default="default", description="Rate-limit tier (accounts.tiers in the config).")
    admin: bool = Field(default=False, description="May call admin routes (/v1/stats).")
    balance: int | None = Field(default=None, description="Tokens this key may use in total; None: unlimited.")
    created_at: float
    revoked_at: float | None = None
    key_hash: str = Field(description="sha256 of the full key, hex.")

    def matches(self, key: str) -> bool:
        return hmac.compare_digest(self.key_hash, hash_key(key))

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Principal:
    """Who a request acts as.

    ``account_id`` owns what the request creates (and is the ``user_id`` in listings); ``subject`` names the
    ledger entry charged (the key id, or ``anonymous``); ``rate_subject`` is whose rate limits apply (the
    account, shared by all its keys; the client IP in anonymous mode)."""

    account_id: str
    subject: str
    rate_subject: str
    tier: str = "default"
    admin: bool = False
    balance: int | None = None

    @classmethod
    def anonymous(cls, client_ip: str | None) -> "Principal":
        return cls(ANONYMOUS_OWNER, ANONYMOUS_SUBJECT, f"ip:{client_ip or 'unknown'}", admin=True)

    @classmethod
    def of_key(cls, rec: KeyRecord) -> "Principal":
        # Limits are per account and tier: two keys of one account with different tiers never share (and flip) a bucket.
        return cls(rec.account_id, rec.key_id, f"account:{rec.account_id}:{rec.tier}", rec.tier, rec.admin, rec.balance)

    @classmethod
    def of_account(cls, account_id: str, tier: str = "default") -> "Principal":
        """A trusted in-cluster caller (a Python DeploymentHandle) acting as an account without a key."""
        account_id = str(uuid.UUID(account_id))  # an account is a UUID, in one spelling: refuse anything else
        return cls(account_id, f"account-{account_id}", f"account:{account_id}:{tier}", tier)


class AccountStore:
    """Key records and ledger totals over a :class:`BlobStore`. Sync methods for the admin command; async ones
    (own small thread pool, never the event loop's default executor) for the service."""

    def __init__(self, blobs: BlobStore, *, io_threads: int = 4):
        self.blobs = blobs
        self._pool: ThreadPoolExecutor | None = None
        self._io_threads = io_threads

    async def _run(self, fn: Callable[..., T], *args) -> T:
        """Run a blocking store call in this store's threads; a failing store is a retryable 503 (never a 500)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self._io_threads, thread_name_prefix="account-store")
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)
        except (OSError, ValueError) as exc:
            logger.error("account store %s failed: %s", getattr(fn, "__name__", fn), exc)
            raise ServiceUnavailable(f"the accounts store is unavailable ({type(exc).__name__}); retry shortly") from None

    # -- keys -----------------------------------------------------------------------------------------------
    def create_key(
        self, name: str, *, tier: str = "default", balance: int | None = None, admin: bool = False,
        account_id: str | None = None, clock: Callable[[], float] = time.time,
    ) -> tuple[KeyRecord, str]:
        """A new key for a new account (or another key for `account_id`); returns the record and the key."""
        key_id, key = new_key()
        rec = KeyRecord(
            key_id=key_id, name=name, account_id=str(uuid.UUID(account_id)) if account_id else str(uuid.uuid4()),
            tier=tier, admin=admin, balance=balance, created_at=clock(), key_hash=hash_key(key),
        )
        self.write_key(rec)
        return rec, key

    def write_key(self, rec: KeyRecord) -> None:
        self.blobs.write(f"accounts/keys/{rec.key_id}.json", rec.model_dump_json().encode())

    def read_key(self, key_id: str) -> KeyRecord | None:
        if not KEY_ID_PATTERN.fullmatch(key_id):
            return None
        raw = self.blobs.read(f"accounts/keys/{key_id}.json")
        return KeyRecord.model_validate_json(raw) if raw else None

    def list_keys(self) -> list[KeyRecord]:
        names = self.blobs.list("accounts/keys")
        recs = [self.read_key(n[: -len(".json")]) for n in names if n.endswith(".json")]
        return sorted((r for r in recs if r is not None), key=lambda r: r.created_at)

    def revoke(self, key_id: str, *, clock: Callable[[], float] = time.time) -> KeyRecord | None:
        rec = self.read_key(key_id)
        if rec is None:
            return None
        if rec.revoked_at is None:
            rec = rec.model_copy(update={"revoked_at": clock()})
            self.write_key(rec)
        return rec

    async def get_key(self, key_id: str) -> KeyRecord | None:
        return await self._run(self.read_key, key_id)

    # -- ledger ---------------------------------------------------------------------------------------------
    def read_ledger(self, subject: str) -> dict | None:
        raw = self.blobs.read(f"accounts/ledger/{subject}.json")
        return json.loads(raw) if raw else None

    def list_ledger(self) -> list[dict]:
        names = self.blobs.list("accounts/ledger")
        out = [self.read_ledger(n[: -len(".json")]) for n in names if n.endswith(".json")]
        return [e for e in out if e]

    def write_ledger(self, entries: list[dict]) -> None:
        for e in entries:
            self.blobs.write(f"accounts/ledger/{e['subject']}.json", json.dumps(e).encode())

    async def load_ledger(self, subject: str) -> dict | None:
        return await self._run(self.read_ledger, subject)

    async def save_ledger(self, entries: list[dict]) -> None:
        if entries:
            await self._run(self.write_ledger, entries)


class Authenticator:
    """``Authorization`` header -> :class:`Principal`, with key records cached for ``ttl_s``.

    Without ``require_keys`` (anonymous mode) every caller is the one anonymous account and the header is
    ignored (Jina's own examples send an empty ``Bearer``); with ``local_only`` it answers only clients on
    loopback addresses (LocalClientsOnly otherwise; callers with no address, Python handle calls, are local).
    With keys: no header or an empty key -> AUTH_MISSING_API_KEY; not ``Bearer <token>`` ->
    AUTH_INVALID_FORMAT; unknown, revoked or wrong -> AUTH_INVALID_API_KEY. Errors never echo the key."""

    def __init__(
        self, store: AccountStore, *, require_keys: bool, local_only: bool = False, ttl_s: float = 2.0,
        cache_size: int = 100_000, clock: Callable[[], float] = time.monotonic,
    ):
        self.store = store
        self.require_keys = require_keys
        self.local_only = local_only and not require_keys
        self.ttl_s = ttl_s
        self.cache_size = cache_size
        self._clock = clock
        self._cache: OrderedDict[str, tuple[KeyRecord | None, float]] = OrderedDict()

    async def authenticate(self, authorization: str | None, client_ip: str | None = None) -> Principal:
        if not self.require_keys:
            if self.local_only and client_ip is not None and not is_loopback(client_ip):
                raise LocalClientsOnly(
                    "This service runs without API keys for this machine only; clients on other hosts are refused. "
                    "Its operator can require keys (--require-keys) or allow anonymous access (--allow-anonymous)."
                )
            return Principal.anonymous(client_ip)
        return Principal.of_key(await self.verify(parse_bearer(authorization)))

    async def verify(self, key: str) -> KeyRecord:
        """The active record of a full key (InvalidApiKey otherwise)."""
        m = KEY_PATTERN.fullmatch(key)
        if m is None:
            raise InvalidApiKey("Invalid API key. Check the key, or create one with ./scripts/keys create.")
        rec = await self._record(m.group(1))
        if rec is None or not rec.active or not rec.matches(key):
            raise InvalidApiKey("Invalid API key: unknown or revoked.")
        return rec

    async def _record(self, key_id: str) -> KeyRecord | None:
        now = self._clock()
        hit = self._cache.get(key_id)
        if hit is not None and now - hit[1] < self.ttl_s:
            return hit[0]
        rec = await self.store.get_key(key_id)
        self._cache[key_id] = (rec, now)
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return rec


@functools.lru_cache(maxsize=4096)  # asked once per anonymous request with the client's address: parse each once
def is_loopback(host: str) -> bool:
    """``localhost`` or a loopback address (127.0.0.0/8, ::1, or IPv4-mapped 127.x)."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def parse_bearer(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive)."""
    value = (authorization or "").strip()
    if not value:
        raise MissingApiKey("Missing API key: send `Authorization: Bearer <key>`.")
    parts = value.split()
    if parts[0].lower() != "bearer":
        raise InvalidAuthFormat("Invalid Authorization header: expected `Bearer <key>`.")
    if len(parts) == 1:
        raise MissingApiKey("Missing API key: send `Authorization: Bearer <key>`.")
    if len(parts) > 2:
        raise InvalidAuthFormat("Invalid Authorization header: expected `Bearer <key>`.")
    return parts[1]
