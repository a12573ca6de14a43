"""The accounts actor: the one place rate-limit buckets and the usage ledger live, for every ingress replica.

One named, detached actor per store (``accounts-<store digest>``), get-or-created by each ingress replica.
Replicas call it once per rate-limit *lease* (a slice of a bucket, see ``classifiers/accounts/ratelimit.py``) and once
per ``usage_flush_s`` with their pending usage, never per request. It persists the ledger every
``ledger_flush_s``. If it dies, Ray restarts it: buckets start full again (a subject may get one extra minute's
budget), the ledger reloads from the store (at most ``ledger_flush_s`` of counts lost), and calls made while it
is down answer a retryable 503.
"""
from __future__ import annotations

import asyncio
import logging

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from classifiers.accounts.gate import AccountsConfig
from classifiers.accounts.keys import AccountStore
from classifiers.accounts.ratelimit import BudgetAuthority, Grant, LeaseRequest
from classifiers.accounts.usage import FlushId, UsageDelta, UsageLedger
from classifiers.protocol.errors import ServiceUnavailable
from classifiers.storage.store import BlobStore
from deployments.classifier_shards import NAMESPACE, store_digest

logger = logging.getLogger("ray.serve")


# Ray's typed overloads of ray.remote(...) list task options only, not actor ones such as max_concurrency.
@ray.remote(max_restarts=-1, max_concurrency=1000)  # type: ignore[call-overload]
class AccountsActor:
    def __init__(self, blobs: BlobStore, config: AccountsConfig):
        self.config = config
        self.authority = BudgetAuthority()
        self.ledger = UsageLedger(AccountStore(blobs))
        self._loop: asyncio.Task | None = None

    def _ensure_loop(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._persist())

    async def _persist(self) -> None:
        while True:
            await asyncio.sleep(self.config.ledger_flush_s)
            try:
                await self.ledger.flush()
            except Exception:  # noqa: BLE001 - kept dirty, retried next round
                logger.exception("accounts: ledger flush failed; retrying in %.1fs", self.config.ledger_flush_s)

    async def exchange(self, requests: list[LeaseRequest]) -> list[Grant]:
        self._ensure_loop()
        return self.authority.exchange_now(requests)

    async def add_usage(self, deltas: list[UsageDelta], flush: FlushId | None = None) -> dict[str, int]:
        """A replica's usage; ``flush`` makes a resend (its first answer lost) add nothing (classifiers/accounts/usage.py)."""
        self._ensure_loop()
        return await self.ledger.add_usage(deltas, flush)

    async def spent(self, subjects: list[str]) -> dict[str, int]:
        self._ensure_loop()
        return await self.ledger.spent(subjects)

    async def usage(self, subject: str) -> dict:
        self._ensure_loop()
        return await self.ledger.usage(subject)

    async def flush(self) -> int:
        """Persist the ledger now (tests, shutdown)."""
        return await self.ledger.flush()


class RemoteAccounts:
    """The ingress's BudgetSource and LedgerSink: the accounts actor, get-or-created, a dead one retried."""

    RETRIES = 3

    def __init__(self, blobs: BlobStore, config: AccountsConfig):
        self.blobs = blobs
        self.config = config
        self.name = f"accounts-{store_digest(blobs.url)}"
        self._actor = None

    def _handle(self, fresh: bool = False):
        if fresh or self._actor is None:
            # an ActorClass (ray.remote above): mypy keeps a decorated class's type (python/mypy#3135)
            self._actor = AccountsActor.options(  # type: ignore[attr-defined]
                name=self.name, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                num_cpus=self.config.num_cpus,
            ).remote(self.blobs, self.config)
        return self._actor

    CALL_TIMEOUT_S = 5.0  # an actor that is restarting queues calls: a request must not wait on it for long

    async def _call(self, method):
        for attempt in range(self.RETRIES + 1):
            try:
                return await asyncio.wait_for(method(self._handle(fresh=attempt > 0)), self.CALL_TIMEOUT_S)
            except asyncio.TimeoutError:
                raise ServiceUnavailable("the accounts service is slow to answer; retry shortly") from None
            except (ActorDiedError, ActorUnavailableError, RayActorError) as exc:
                if attempt == self.RETRIES:
                    raise ServiceUnavailable("the accounts service is restarting; retry shortly") from exc
                await asyncio.sleep(0.3 * (attempt + 1))
        raise AssertionError("unreachable")

    async def exchange(self, requests: list[LeaseRequest]) -> list[Grant]:
        return await self._call(lambda a: a.exchange.remote(requests))

    async def add_usage(self, deltas: list[UsageDelta], flush: FlushId | None = None) -> dict[str, int]:
        # Retried below on a dead actor, and by the meter on any failure: safe, since the ledger knows `flush`.
        return await self._call(lambda a: a.add_usage.remote(deltas, flush))

    async def spent(self, subjects: list[str]) -> dict[str, int]:
        return await self._call(lambda a: a.spent.remote(subjects))

    async def usage(self, subject: str) -> dict:
        return await self._call(lambda a: a.usage.remote(subject))

    async def flush(self) -> int:
        return await self._call(lambda a: a.flush.remote())
