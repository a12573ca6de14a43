"""The Ingress deployment: its routes, for HTTP and for Python ``DeploymentHandle`` callers.

Each route is one adapter: it names the caller (a :class:`~serve_app.operations.Call`: the principal the HTTP
guard decided before the body, or the ``api_key=`` / ``account_id=`` a handle caller passes), then hands the
request to its operation (``serve_app/operations.py``), which runs admission and the service. HTTP bodies are parsed
once here and answers leave pre-serialised (``serve_app/http_api.py``); each replica builds its own FastAPI app
(``__serve_build_asgi_app__``) from :data:`ROUTES`, and its parts from the typed configs
(``serve_app/composition.py``). ``/train``'s retry key is the ``Idempotency-Key`` header alone (``X-Request-ID`` is
for tracing only). With keys required, a handle call naming no caller is refused: no silent anonymous fallback.
"""

import asyncio
import logging
from operator import attrgetter
from typing import Callable

from fastapi import FastAPI, Request
from fastapi.responses import Response
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from classifiers.accounts.gate import AccountsConfig
from classifiers.accounts.keys import Principal
from classifiers.catalog.registry import Registry
from classifiers.protocol.errors import InvalidInput, MissingApiKey
from classifiers.protocol.info import Health, ModelCard, ModelList, Readiness, ServiceStats
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
from deployments.config import StateConfig
from serve_app.composition import build_parts
from serve_app.config import IngressConfig
from serve_app.http_api import (
    client_ip,
    json_body,
    make_api,
    placed_at_edge,
    rate_header_sink,
    read_body,
    request_body,
    with_body_schemas,
)
from serve_app.info import ServiceInfo
from serve_app.operations import Call

logger = logging.getLogger("ray.serve")

# The HTTP routes, in the order they are matched: the method each one calls (the Ingress's own, or `info.*`: its
# ServiceInfo's) -> its FastAPI route decorator (the pattern of Ray Serve LLM's ingress endpoint map). Bound to the
# replica's own objects when it builds its app.
ROUTES: dict[str, Callable[[FastAPI], Callable]] = {
    "http_classify": lambda api: api.post(
        "/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True,
        openapi_extra=request_body(ClassifyRequest),
    ),
    "http_train": lambda api: api.post("/v1/train", response_model=TrainingResponse, openapi_extra=request_body(TrainRequest)),
    "http_embeddings": lambda api: api.post(
        "/v1/embeddings", response_model=EmbeddingsResponse, openapi_extra=request_body(EmbeddingsRequest)
    ),
    "http_list_classifiers": lambda api: api.get("/v1/classifiers", response_model=list[ClassifierSummary]),
    "http_list_classifiers_post": lambda api: api.post("/v1/classifiers", response_model=list[ClassifierSummary]),
    "http_delete_classifier": lambda api: api.delete("/v1/classifiers/{classifier_id}", response_model=DeleteResponse),
    "info.usage": lambda api: api.get("/v1/usage", response_model=UsageReport),
    "info.models": lambda api: api.get("/v1/models", response_model=ModelList),
    "info.model": lambda api: api.get("/v1/models/{model_id}", response_model=ModelCard),
    "info.playground": lambda api: api.get("/playground", include_in_schema=False),
    "info.health": lambda api: api.get("/health", response_model=Health),
    "info.live": lambda api: api.get("/live", response_model=Health),
    "info.ready": lambda api: api.get("/ready", response_model=Readiness),
    "info.stats": lambda api: api.get("/v1/stats", response_model=ServiceStats),
}
# the request models the routes read themselves
BODIES: list[type[BaseModel]] = [ClassifyRequest, TrainRequest, EmbeddingsRequest]


@serve.deployment(name="Ingress")
@serve.ingress()  # no app at class definition: each replica builds its own in __serve_build_asgi_app__
class Ingress:
    """One replica: its parts (``build_parts``) and its routes, each auth + one operation."""

    def __init__(
        self, embedders: dict[str, DeploymentHandle], *, registry: Registry, limits: Limits, ingress: IngressConfig,
        state: StateConfig, accounts: AccountsConfig, model_cards: dict[str, ModelCard], generation: int,
    ):
        self.parts = build_parts(embedders, registry=registry, limits=limits, ingress=ingress, state=state,
                                 accounts=accounts, generation=generation)
        self.ops = self.parts.operations
        self.info = ServiceInfo(self.parts, model_cards, self._http_principal)
        self._maintenance: asyncio.Task | None = None

    def __serve_build_asgi_app__(self) -> FastAPI:
        """This replica's app, built by Serve once the constructor has run: its limits, gate and metrics are this
        replica's own, and each route of :data:`ROUTES` calls this replica's method."""
        cfg, p = self.parts.ingress, self.parts
        api = make_api(cfg.max_request_bytes, cfg.max_inflight_body_bytes, gate=p.gate, metrics=p.metrics, places=p.places,
                       body_timeout_s=cfg.body_timeout_s, min_body_rate=cfg.min_body_bytes_per_s)
        for name, route in ROUTES.items():
            route(api)(attrgetter(name)(self))
        with_body_schemas(api, BODIES)
        return api

    async def __del__(self):
        """Graceful shutdown (Serve calls it after draining): send this replica's pending usage to the ledger."""
        try:
            await self.parts.gate.meter.flush()
        except Exception as exc:  # noqa: BLE001 - shutting down; what is lost is at most this replica's last second
            logger.warning("usage not flushed at shutdown: %s", exc)

    def _maintain(self) -> None:
        if self._maintenance is None:
            self._maintenance = asyncio.get_running_loop().create_task(self._maintenance_loop())

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.parts.accounts.usage_flush_s)
            await self.parts.gate.maintain()
            cache = self.parts.vectors.label_cache
            self.parts.metrics.flush(cache.hits, cache.misses)

    # -- who is calling ---------------------------------------------------------------------------------------
    async def _http_principal(self, request: Request) -> Principal:
        self._maintain()
        principal = getattr(request.state, "principal", None)  # decided by the guard, before the body
        return principal or await self.parts.gate.principal(request.headers.get("authorization"), client_ip(request))

    async def _http_call(self, request: Request, model: str | None = None) -> Call:
        request.state.model = self.ops.model_tag(model)  # the metrics tag of the guard's request count
        # Only Idempotency-Key: X-Request-ID is a tracing id, reused by clients and proxies across operations.
        return Call(await self._http_principal(request), rate_header_sink(request), placed_at_edge(request),
                    request.headers.get("idempotency-key"))

    async def _handle_principal(self, api_key: str | None, account_id: str | None) -> Principal:
        self._maintain()
        if api_key is not None:
            return Principal.of_key(await self.parts.gate.auth.verify(api_key))
        if account_id is not None:
            try:
                return Principal.of_account(account_id)
            except ValueError:
                raise InvalidInput("account_id must be an account UUID") from None
        if self.parts.accounts.require_keys:
            raise MissingApiKey("keys are required: a Python caller passes api_key= or account_id=")
        return Principal.anonymous("handle")

    # -- Python handle callers: `handle.classify.remote(ClassifyRequest(...), api_key=...)` --------------------
    async def classify(self, body: ClassifyRequest, *, api_key: str | None = None, account_id: str | None = None) -> ClassificationResponse:
        return await self.ops.classify(body, Call(await self._handle_principal(api_key, account_id)))

    async def train(
        self, body: TrainRequest, *, api_key: str | None = None, account_id: str | None = None, idempotency_key: str | None = None,
    ) -> TrainingResponse:
        principal = await self._handle_principal(api_key, account_id)
        return await self.ops.train(body, Call(principal, idempotency_key=idempotency_key))

    async def embeddings(self, body: EmbeddingsRequest, *, api_key: str | None = None, account_id: str | None = None) -> EmbeddingsResponse:
        return await self.ops.embed(body, Call(await self._handle_principal(api_key, account_id)))

    async def list_classifiers(self, *, api_key: str | None = None, account_id: str | None = None) -> list[ClassifierSummary]:
        return await self.parts.fewshot.list((await self._handle_principal(api_key, account_id)).account_id)

    async def delete_classifier(self, classifier_id: str, *, api_key: str | None = None, account_id: str | None = None) -> DeleteResponse:
        return await self.parts.fewshot.delete(classifier_id, (await self._handle_principal(api_key, account_id)).account_id)

    # -- HTTP -----------------------------------------------------------------------------------------------
    async def http_classify(self, request: Request) -> Response:
        """Classify inputs: zero-shot (`model` + `labels`) or few-shot (`classifier_id`).

        Each input gets the best label and a probability for every label. `labels` may be a list, or a dict
        of up to 8 named groups (one prediction per group). Duplicate labels collapse to one (compared after
        Unicode NFC and trimming); unknown top-level fields are ignored, as Jina does.

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small",
              "input": ["Will it rain in Paris tomorrow?", {"text": "Who won the match last night?"}],
              "labels": ["weather", "sport", "cooking"]}'

            curl -s http://127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' -d '{
              "classifier_id": "<id from /v1/train>", "input": ["Is it going to snow?"], "multi_label": true}'
        """
        body = await read_body(request, ClassifyRequest)
        return json_body(await self.ops.classify(body, await self._http_call(request, body.model)), exclude_none=True)

    async def http_train(self, request: Request) -> Response:
        """Create a few-shot classifier (`model` + labeled `input`), or update one (`classifier_id` + `input`).

        Learning is one-pass online: examples update the classifier's statistics and are dropped. New labels
        may be added in any update; an example's `label` may be a list of every label that applies. `num_iters`
        (default 10) weights this batch: weight = num_iters / 10. A retry with the same `Idempotency-Key` header is
        applied once and answers the first response; the same key with a different body is refused (422
        `INPUT_IDEMPOTENCY_KEY_REUSED`), and while the first request with it is still running, 409
        `CONFLICT_RESOURCE_BUSY` (retry). `X-Request-ID` is for tracing only.

            curl -s http://127.0.0.1:8000/v1/train -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small", "access": "private", "num_iters": 10,
              "input": [{"text": "Rain all day tomorrow", "label": "weather"},
                        {"text": "The striker scored twice", "label": "sport"}]}'
        """
        body = await read_body(request, TrainRequest)
        return json_body(await self.ops.train(body, await self._http_call(request, body.model)))

    async def http_embeddings(self, request: Request) -> Response:
        """Embed texts (and images, for CLIP models) with any served model, in Jina's format.

        Served by the same embedder replicas and batches as classify. `embedding_type` is `float` (default),
        `base64`, `binary` or `ubinary` (or a list of them); `dimensions` truncates Matryoshka models only.

            curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' -d '{
              "model": "all-MiniLM-L6-v2", "input": ["Will it rain tomorrow?"]}'
        """
        body = await read_body(request, EmbeddingsRequest)
        return json_body(await self.ops.embed(body, await self._http_call(request, body.model)))

    async def http_list_classifiers(self, request: Request) -> list[ClassifierSummary]:
        """The caller's classifiers with Jina's summary fields (`curl -s http://127.0.0.1:8000/v1/classifiers`)."""
        return await self.parts.fewshot.list((await self._http_principal(request)).account_id)

    async def http_list_classifiers_post(self, request: Request) -> list[ClassifierSummary]:
        """Same as GET (Jina's spec offers both)."""
        return await self.parts.fewshot.list((await self._http_principal(request)).account_id)

    async def http_delete_classifier(self, classifier_id: str, request: Request) -> DeleteResponse:
        """Delete a classifier from memory and the store: `curl -X DELETE .../v1/classifiers/<id>`."""
        response = await self.parts.fewshot.delete(classifier_id, (await self._http_principal(request)).account_id)
        self.parts.metrics.op("delete")
        return response
