"""The composition root of one Ingress replica: its parts, built from the typed configs the builder binds
(``serve_app/app.py``) and the embedder deployments' handles, each part with explicit constructor dependencies.

``serve_app/ingress.py`` asks this module for its parts and does nothing else with the configs; tests and tools
that want the same wiring build it here too.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from classifiers.accounts.gate import AccountsConfig, AccountsGate
from classifiers.accounts.keys import AccountStore, Authenticator
from classifiers.accounts.ratelimit import LeaseLimiter
from classifiers.accounts.usage import UsageMeter
from classifiers.catalog.registry import Registry
from classifiers.embedding.service import EmbeddingsService
from classifiers.embedding.tokens import load_counters
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.fewshot.service import FewShotService
from classifiers.request.limits import Limits
from classifiers.storage.store import BlobStore, open_blob_store
from classifiers.zeroshot.service import ZeroShotService
from deployments.accounts_actor import RemoteAccounts
from deployments.classifier_shards import ShardedRepo
from deployments.config import StateConfig
from deployments.metrics import IngressMetrics
from serve_app.admission import AdmissionControl, InflightLimits
from serve_app.config import IngressConfig
from serve_app.embedders import HandleEmbedder
from serve_app.operations import Operations

logger = logging.getLogger("ray.serve")


@dataclass(frozen=True)
class IngressParts:
    """Everything one Ingress replica serves with."""

    registry: Registry
    ingress: IngressConfig
    accounts: AccountsConfig
    embedders: dict[str, DeploymentHandle]
    vectors: Vectors
    repo: ShardedRepo
    fewshot: FewShotService
    gate: AccountsGate
    metrics: IngressMetrics
    places: InflightLimits
    admission: AdmissionControl
    operations: Operations
    handles: HandleEmbedder

    def embedder_calls(self) -> dict[str, int]:
        """Small requests to the embedders and the handle calls that carried them (coalescing, /v1/stats)."""
        return {"requests": self.handles.coalescer.requests, "calls": self.handles.coalescer.calls}


def accounts_gate(blobs: BlobStore, accounts: AccountsConfig) -> AccountsGate:
    """One replica's gate: keys from the store, leases and the ledger through the accounts actor."""
    remote = RemoteAccounts(blobs, accounts)
    return AccountsGate(
        accounts,
        auth=Authenticator(
            AccountStore(blobs), require_keys=accounts.require_keys, local_only=not accounts.allow_anonymous,
            ttl_s=accounts.key_cache_ttl_s,
        ),
        limiter=LeaseLimiter(remote, lease_fraction=accounts.lease_fraction, lease_ttl_s=accounts.lease_ttl_s),
        meter=UsageMeter(remote, spent_ttl_s=accounts.key_cache_ttl_s),
    )


def build_parts(
    embedders: dict[str, DeploymentHandle], *, registry: Registry, limits: Limits, ingress: IngressConfig,
    state: StateConfig, accounts: AccountsConfig, generation: int,
) -> IngressParts:
    """One replica's parts. Each served model's tokenizer is loaded here, so a request is counted (and admitted)
    before any model work; the effective config is logged once."""
    blobs = open_blob_store(state.store_url)
    cache = LabelCache(ingress.label_cache_size, ingress.label_cache_bytes)
    embedder = HandleEmbedder(embedders, calls_in_flight=ingress.embed_calls_in_flight)
    vectors = Vectors(embedder, limits, cache, load_counters([registry.get(n) for n in embedders]))
    repo = ShardedRepo(blobs, state, limits, generation=generation)
    fewshot = FewShotService(registry=registry, limits=limits, vectors=vectors, repo=repo)
    gate = accounts_gate(blobs, accounts)
    metrics = IngressMetrics()
    places = InflightLimits(metrics, max_inflight=ingress.max_inflight, max_inflight_per_client=ingress.max_inflight_per_client)
    admission = AdmissionControl(gate, metrics, places, request_timeout_s=ingress.request_timeout_s)
    operations = Operations(
        registry=registry, admission=admission, fewshot=fewshot,
        zeroshot=ZeroShotService(registry=registry, limits=limits, vectors=vectors),
        embeddings=EmbeddingsService(registry=registry, limits=limits, vectors=vectors),
    )
    log_effective_config(registry, generation, limits=limits, ingress=ingress, state=state, accounts=accounts)
    return IngressParts(registry, ingress, accounts, embedders, vectors, repo, fewshot, gate, metrics, places, admission,
                        operations, embedder)


def log_effective_config(registry: Registry, generation: int, **parts) -> None:
    mode = ("keys required" if parts["accounts"].require_keys
            else "ANONYMOUS mode (every caller is one account; --require-keys to change)")
    effective = {"models": registry.names(), "aliases": registry.aliases()}
    effective.update({name: part.model_dump(mode="json") for name, part in parts.items()})
    logger.info("Ingress config (generation %d, %s): %s", generation, mode, json.dumps(effective))
