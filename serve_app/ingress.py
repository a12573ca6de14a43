"""The Ingress deployment: its routes (HTTP and Python handle methods) and the wiring of its replica's parts.

``Ingress`` receives every HTTP request (and every Python ``DeploymentHandle`` call): it names the caller (the
accounts gate, ``classifiers/accounts/gate.py``), admits the request under its limits
(``serve_app/admission.py``), hands the validated request (pydantic, Jina's wire models) to the zero-shot,
few-shot or embeddings service (``classifiers/``), and charges the usage of a successful one. Each replica builds
its own FastAPI app once its parts exist (``__serve_build_asgi_app__``: ``serve_app/http_api.py`` holds the app
factory, request ids, body limits and the mapping of typed errors to Jina's bodies), and binds the routes of
:data:`ROUTES` to its own methods. ``/train``'s retry key is the ``Idempotency-Key`` header alone
(``X-Request-ID`` is for tracing only).

Python callers (a ``DeploymentHandle``) call the methods without the ``http_`` prefix and say who they are
explicitly: ``api_key=`` (verified like a header) or ``account_id=`` (a trusted in-cluster caller acting as that
account). With keys required, a handle call without either is refused: there is no silent anonymous fallback.
"""

import asyncio
import hashlib
import json
import logging
from typing import Callable

from fastapi import FastAPI, Request
from ray import serve
from ray.serve.handle import DeploymentHandle

from classifiers.accounts.gate import AccountsConfig, AccountsGate
from classifiers.accounts.keys import AccountStore, Authenticator, Principal
from classifiers.accounts.ratelimit import LeaseLimiter
from classifiers.accounts.usage import UsageMeter
from classifiers.catalog.registry import Registry
from classifiers.embedding.service import EmbeddingsService
from classifiers.embedding.tokens import load_counters
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.fewshot.service import FewShotService
from classifiers.protocol.errors import InvalidInput, MissingApiKey, ServiceError, ServiceUnavailable
from classifiers.protocol.wire import (
    ClassificationResponse,
    ClassifierSummary,
    ClassifyRequest,
    DeleteResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    TrainingResponse,
    TrainRequest,
    UsageReport,
)
from classifiers.request.limits import Limits
from classifiers.storage.store import BlobStore, open_blob_store
from classifiers.zeroshot.service import ZeroShotService
from deployments.accounts_actor import RemoteAccounts
from deployments.classifier_shards import ShardedRepo
from deployments.config import StateConfig
from deployments.metrics import IngressMetrics
from deployments.process import memory
from serve_app.admission import AdmissionControl, InflightLimits
from serve_app.config import IngressConfig
from serve_app.embedders import HandleEmbedder
from serve_app.http_api import client_ip, make_api, placed_at_edge, rate_header_sink

logger = logging.getLogger("ray.serve")
MAX_IDEMPOTENCY_KEY = 255

# The HTTP routes, in the order they are matched: the Ingress method each one calls -> its FastAPI route decorator
# (the pattern of Ray Serve LLM's ingress endpoint map). Bound to the replica's own methods when it builds its app.
ROUTES: dict[str, Callable[[FastAPI], Callable]] = {
    "http_classify": lambda api: api.post(
        "/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True
    ),
    "http_train": lambda api: api.post("/v1/train", response_model=TrainingResponse),
    "http_embeddings": lambda api: api.post("/v1/embeddings", response_model=EmbeddingsResponse),
    "http_list_classifiers": lambda api: api.get("/v1/classifiers", response_model=list[ClassifierSummary]),
    "http_list_classifiers_post": lambda api: api.post("/v1/classifiers", response_model=list[ClassifierSummary]),
    "http_delete_classifier": lambda api: api.delete("/v1/classifiers/{classifier_id}", response_model=DeleteResponse),
    "http_usage": lambda api: api.get("/v1/usage", response_model=UsageReport),
    "models": lambda api: api.get("/v1/models"),
    "model": lambda api: api.get("/v1/models/{model_id}"),
    "playground": lambda api: api.get("/playground", include_in_schema=False),
    "health": lambda api: api.get("/health"),
    "live": lambda api: api.get("/live"),
    "ready": lambda api: api.get("/ready"),
    "stats": lambda api: api.get("/v1/stats"),
}


def update_id_of(principal: Principal, idempotency_key: str | None) -> str | None:
    """A client's retry key, scoped to its account: a retried /train with the same key is applied once (bound to
    its first body by the few-shot service's fingerprint, so a different body under it is refused, not replayed)."""
    if not idempotency_key:
        return None
    if len(idempotency_key) > MAX_IDEMPOTENCY_KEY or not idempotency_key.isprintable():
        raise InvalidInput(f"Idempotency-Key must be at most {MAX_IDEMPOTENCY_KEY} printable characters")
    return hashlib.sha256(f"{principal.account_id}\x00{idempotency_key}".encode()).hexdigest()[:32]


def _count(items) -> int:
    return len(items) if isinstance(items, list) else 1


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


@serve.deployment(name="Ingress")
@serve.ingress()  # no app at class definition: each replica builds its own in __serve_build_asgi_app__
class Ingress:
    """Composes one replica's gate, admission and services from typed configs; each route is auth + admission +
    one service call."""

    def __init__(
        self, embedders: dict[str, DeploymentHandle], *, registry: Registry, limits: Limits, ingress: IngressConfig,
        state: StateConfig, accounts: AccountsConfig, model_cards: dict[str, dict], generation: int,
    ):
        self.registry = registry
        self.model_cards = model_cards
        self._embedders = embedders
        self._ingress = ingress
        self._accounts = accounts
        blobs = open_blob_store(state.store_url)
        cache = LabelCache(ingress.label_cache_size, ingress.label_cache_bytes)
        # Each served model's tokenizer, here: a request is counted (and admitted) before any model work.
        self.vectors = Vectors(HandleEmbedder(embedders), limits, cache, load_counters([registry.get(n) for n in embedders]))
        self.repo = ShardedRepo(blobs, state, limits, generation=generation)
        self.zeroshot = ZeroShotService(registry=registry, limits=limits, vectors=self.vectors)
        self.fewshot = FewShotService(registry=registry, limits=limits, vectors=self.vectors, repo=self.repo)
        self.embeddings_service = EmbeddingsService(registry=registry, limits=limits, vectors=self.vectors)
        self.gate = accounts_gate(blobs, accounts)
        self.metrics = IngressMetrics()
        self.places = InflightLimits(
            self.metrics, max_inflight=ingress.max_inflight, max_inflight_per_client=ingress.max_inflight_per_client
        )
        self.admission = AdmissionControl(self.gate, self.metrics, self.places, request_timeout_s=ingress.request_timeout_s)
        self._maintenance: asyncio.Task | None = None
        mode = ("keys required" if accounts.require_keys
                else "ANONYMOUS mode (every caller is one account; --require-keys to change)")
        parts = {"limits": limits, "ingress": ingress, "state": state, "accounts": accounts}
        effective = {"models": registry.names(), "aliases": registry.aliases()}
        effective.update({name: part.model_dump(mode="json") for name, part in parts.items()})
        logger.info("Ingress config (generation %d, %s): %s", generation, mode, json.dumps(effective))

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's app, built by Serve once the constructor has run: its limits, gate and metrics are this
        replica's own, and each route of :data:`ROUTES` calls this replica's method."""
        cfg = self._ingress
        api = make_api(
            cfg.max_request_bytes, cfg.max_inflight_body_bytes, gate=self.gate, metrics=self.metrics, places=self.places,
            body_timeout_s=cfg.body_timeout_s, min_body_rate=cfg.min_body_bytes_per_s,
        )
        for name, route in ROUTES.items():
            route(api)(getattr(self, name))
        return api

    async def __del__(self):
        """Graceful shutdown (Serve calls it after draining): send this replica's pending usage to the ledger."""
        try:
            await self.gate.meter.flush()
        except Exception as exc:  # noqa: BLE001 - shutting down; what is lost is at most this replica's last second
            logger.warning("usage not flushed at shutdown: %s", exc)

    def _maintain(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintenance_loop())

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._accounts.usage_flush_s)
            await self.gate.maintain()
            cache = self.vectors.label_cache
            self.metrics.label_cache_totals(cache.hits, cache.misses)

    # -- who is calling ---------------------------------------------------------------------------------------
    async def _http_principal(self, request: Request) -> Principal:
        self._maintain()
        principal = getattr(request.state, "principal", None)  # decided by the middleware, before the body
        return principal or await self.gate.principal(request.headers.get("authorization"), client_ip(request))

    async def _handle_principal(self, api_key: str | None, account_id: str | None) -> Principal:
        self._maintain()
        if api_key is not None:
            return Principal.of_key(await self.gate.auth.verify(api_key))
        if account_id is not None:
            try:
                return Principal.of_account(account_id)
            except ValueError:
                raise InvalidInput("account_id must be an account UUID") from None
        if self._accounts.require_keys:
            raise MissingApiKey("keys are required: a Python caller passes api_key= or account_id=")
        return Principal.anonymous("handle")

    def _model_tag(self, name: str | None, request: Request | None) -> str:
        """A bounded metrics tag: the served model's canonical name, else `unknown` (never client text)."""
        try:
            tag = self.registry.get(name).name if name else "classifier"
        except ServiceError:
            tag = "unknown"
        if request is not None:
            request.state.model = tag
        return tag

    # -- the operations, for HTTP routes and Python handle callers alike ---------------------------------------
    async def _classify(self, body: ClassifyRequest, principal: Principal, request: Request | None) -> ClassificationResponse:
        model, inputs = self._model_tag(body.model, request), _count(body.input)
        if body.classifier_id is not None:
            return await self.admission.run(
                principal, "fewshot", lambda t: self.fewshot.classify(body, principal.account_id, budget=t, tenant=principal.rate_subject),
                lambda r: r.usage.total_tokens, rate_headers=rate_header_sink(request), placed=placed_at_edge(request), op="classify", model=model, inputs=inputs,
            )
        return await self.admission.run(
            principal, "zeroshot", lambda t: self.zeroshot.classify(body, budget=t, tenant=principal.rate_subject),
            lambda r: r.usage.total_tokens, rate_headers=rate_header_sink(request), placed=placed_at_edge(request), model=model, inputs=inputs,
        )

    async def _train(
        self, body: TrainRequest, principal: Principal, idempotency_key: str | None, request: Request | None
    ) -> TrainingResponse:
        update_id = update_id_of(principal, idempotency_key)
        return await self.admission.run(
            principal, "train",
            # Charged when the update is submitted to the state shard, not when it returns: an update the client
            # abandons (disconnects) after submitting is applied by the shard and paid for, so a retry with the same
            # key (a free replay) gets nothing for free. Failed requests (4xx/5xx, the 409 and 422 of a key in use or
            # reused with another body included: they applied nothing) and replays are refunded.
            lambda t: self.fewshot.train(body, principal.account_id, update_id=update_id, budget=t, on_submit=t.done,
                                         tenant=principal.rate_subject),
            lambda r: None if r.replayed() else r.usage.total_tokens, rate_headers=rate_header_sink(request), placed=placed_at_edge(request),
            model=self._model_tag(body.model, request), inputs=_count(body.input),
            op="create" if body.classifier_id is None else "update",
        )

    async def classify(
        self, body: ClassifyRequest, *, api_key: str | None = None, account_id: str | None = None
    ) -> ClassificationResponse:
        """Python handle callers: ``handle.classify.remote(ClassifyRequest(...), api_key=...)``."""
        return await self._classify(body, await self._handle_principal(api_key, account_id), None)

    async def train(
        self, body: TrainRequest, *, api_key: str | None = None, account_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> TrainingResponse:
        """Python handle callers: ``handle.train.remote(TrainRequest(...), api_key=..., idempotency_key=...)``."""
        return await self._train(body, await self._handle_principal(api_key, account_id), idempotency_key, None)

    async def embeddings(
        self, body: EmbeddingsRequest, *, api_key: str | None = None, account_id: str | None = None
    ) -> EmbeddingsResponse:
        """Python handle callers: ``handle.embeddings.remote(EmbeddingsRequest(...), api_key=...)``."""
        return await self._embed(body, await self._handle_principal(api_key, account_id), None)

    async def _embed(self, body: EmbeddingsRequest, principal: Principal, request: Request | None) -> EmbeddingsResponse:
        return await self.admission.run(
            principal, "embeddings", lambda t: self.embeddings_service.embed(body, budget=t, tenant=principal.rate_subject),
            lambda r: r.usage.total_tokens, rate_headers=rate_header_sink(request), placed=placed_at_edge(request),
            model=self._model_tag(body.model, request), inputs=_count(body.input),
        )

    async def list_classifiers(self, *, api_key: str | None = None, account_id: str | None = None) -> list[ClassifierSummary]:
        return await self.fewshot.list((await self._handle_principal(api_key, account_id)).account_id)

    async def delete_classifier(
        self, classifier_id: str, *, api_key: str | None = None, account_id: str | None = None
    ) -> DeleteResponse:
        return await self.fewshot.delete(classifier_id, (await self._handle_principal(api_key, account_id)).account_id)

    # -- HTTP -----------------------------------------------------------------------------------------------
    async def http_classify(self, body: ClassifyRequest, request: Request) -> ClassificationResponse:
        """Classify inputs: zero-shot (`model` + `labels`) or few-shot (`classifier_id`).

        Each input gets the best label and a probability for every label. `labels` may be a list, or a dict
        of up to 8 named groups (one prediction per group). Duplicate labels collapse to one (compared after
        Unicode NFC and trimming); unknown top-level fields are ignored, as Jina does.

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small",
              "input": ["Will it rain in Paris tomorrow?", {"text": "Who won the match last night?"}],
              "labels": ["weather", "sport", "cooking"]}'

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "classifier_id": "<id from /v1/train>", "input": ["Is it going to snow?"]}'
        """
        return await self._classify(body, await self._http_principal(request), request)

    async def http_train(self, body: TrainRequest, request: Request) -> TrainingResponse:
        """Create a few-shot classifier (`model` + labeled `input`), or update one (`classifier_id` + `input`).

        Learning is one-pass online: examples update the classifier's statistics and are dropped. New labels
        may be added in any update. `num_iters` (default 10) weights this batch: weight = num_iters / 10.
        A retry with the same `Idempotency-Key` header is applied once and answers the first response; the same
        key with a different body is refused (422 `INPUT_IDEMPOTENCY_KEY_REUSED`), and while the first request with
        it is still running, 409 `CONFLICT_RESOURCE_BUSY` (retry). `X-Request-ID` is for tracing only.

            curl -s http://127.0.0.1:8000/v1/train -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small", "access": "private", "num_iters": 10,
              "input": [{"text": "Rain all day tomorrow", "label": "weather"},
                        {"text": "The striker scored twice", "label": "sport"}]}'
        """
        principal = await self._http_principal(request)
        # Only Idempotency-Key: X-Request-ID is a tracing id, reused by clients and proxies across operations.
        return await self._train(body, principal, request.headers.get("idempotency-key"), request)

    async def http_embeddings(self, body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
        """Embed texts (and images, for CLIP models) with any served model, in Jina's format.

        Served by the same embedder replicas and batches as classify. `embedding_type` is `float` (default),
        `base64`, `binary` or `ubinary` (or a list of them); `dimensions` truncates Matryoshka models only.

            curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' -d '{
              "model": "all-MiniLM-L6-v2", "input": ["Will it rain tomorrow?"]}'
        """
        return await self._embed(body, await self._http_principal(request), request)

    async def http_list_classifiers(self, request: Request) -> list[ClassifierSummary]:
        """The caller's classifiers with Jina's summary fields (`curl -s http://127.0.0.1:8000/v1/classifiers`)."""
        return await self.fewshot.list((await self._http_principal(request)).account_id)

    async def http_list_classifiers_post(self, request: Request) -> list[ClassifierSummary]:
        """Same as GET (Jina's spec offers both)."""
        return await self.fewshot.list((await self._http_principal(request)).account_id)

    async def http_delete_classifier(self, classifier_id: str, request: Request) -> DeleteResponse:
        """Delete a classifier from memory and the store: `curl -X DELETE .../v1/classifiers/<id>`."""
        response = await self.fewshot.delete(classifier_id, (await self._http_principal(request)).account_id)
        self.metrics.op("delete")
        return response

    async def http_usage(self, request: Request) -> UsageReport:
        """What the caller's key has been charged (ours): tokens and requests, per mode, and the balance left.

            curl -s http://127.0.0.1:8000/v1/usage -H "Authorization: Bearer $KEY"
        """
        principal = await self._http_principal(request)
        e = await self.gate.meter.usage(principal.subject, principal.account_id)
        left = None if principal.balance is None else principal.balance - e["tokens"]
        return UsageReport(key_id=principal.subject, account_id=e["account_id"], tokens=e["tokens"],
                           requests=e["requests"], by_mode=e["by_mode"], balance=principal.balance, balance_left=left)

    async def models(self, request: Request) -> dict:
        """Models this deployment serves, and what each name (aliases included) really runs.

            curl -s http://127.0.0.1:8000/v1/models
        """
        await self._http_principal(request)
        return {"object": "list", "data": list(self.model_cards.values())}

    async def model(self, model_id: str, request: Request) -> dict:
        """One model's card, e.g. `curl -s http://127.0.0.1:8000/v1/models/multilingual-e5-small`."""
        await self._http_principal(request)
        self.registry.get(model_id)  # an unknown name raises INPUT_MODEL_NOT_FOUND, listing the known ones
        return self.model_cards[model_id]

    async def playground(self):
        """The browser playground (serve_app/playground.html): open like /docs; its API calls need a key as usual."""
        from pathlib import Path  # local imports keep the playground one self-contained insertion

        from fastapi.responses import HTMLResponse

        if getattr(self, "_playground_html", None) is None:  # read once per replica
            self._playground_html = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")
        return HTMLResponse(self._playground_html)

    async def health(self) -> dict:
        """Liveness of the ingress (same as /live)."""
        return {"status": "ok"}

    async def live(self) -> dict:
        """The ingress process is up."""
        return {"status": "ok"}

    async def ready(self) -> dict:
        """200 once every served model is loaded and answering; 503 with the missing ones otherwise."""
        names = list(self._embedders)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._embedders[n].ready.remote(), timeout=5) for n in names), return_exceptions=True
        )
        missing = [n for n, r in zip(names, results, strict=True) if r is not True]
        if missing:
            raise ServiceUnavailable(f"models not ready: {missing}")
        return {"status": "ready", "models": names}

    async def stats(self, request: Request) -> dict:
        """Batching, cache and rate-limit statistics (per replica answering). Admin keys only when keys are required."""
        self.gate.require_admin(await self._http_principal(request))
        names = list(self._embedders)
        embedders = await asyncio.gather(*(self._embedders[n].stats.remote() for n in names))
        return {
            "embedders": dict(zip(names, embedders, strict=True)),
            "label_cache": self.vectors.label_cache.stats(),
            "classifier_shards": await self.repo.stats(),
            "rate_limit_refusals": dict(self.gate.limiter.refused),
            "shed": dict(self.admission.shed),
            "ingress": {"inflight": self.admission.inflight, **memory()},
            "usage_flush_failures": self.gate.meter.failed_flushes,
        }
