"""The HTTP ingress: routes, request ids, body limits, and the one place errors become status codes.

``Ingress`` is the Serve deployment that receives every HTTP request (and every Python ``DeploymentHandle``
call): it validates the request (pydantic, Jina's wire models), hands it to the zero-shot or few-shot service
(``classifiers/``), and maps their typed errors to Jina's body ``{"code", "detail", "request_id"}`` (plus
``errors`` for schema failures). The request id is decided once per request: the ``X-Request-ID`` header the
proxy passes in (the client's, else the one Ray Serve assigned, which the proxy also returns as the response's
``X-Request-ID``), else a new one; the log line and the body use that one id.
"""

import asyncio
import logging
import uuid
from typing import Optional

from fastapi import FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from classifiers.api import (
    ClassificationResponse, ClassifierSummary, ClassifyRequest, DeleteResponse, TrainingResponse, TrainRequest,
)
from classifiers.embedding import EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.errors import RequestValidationFailed, ServiceError, ServiceUnavailable
from classifiers.fewshot_service import FewShotService
from classifiers.state import ANONYMOUS_OWNER
from classifiers.store import open_blob_store
from classifiers.vectors import LabelCache, Vectors
from classifiers.zeroshot_service import ZeroShotService
from deployments.classifier_shards import ShardedRepo
from serve_app.config import AppConfig

logger = logging.getLogger("ray.serve")


def principal_of(authorization: str | None) -> str:
    """Who is calling: the account that owns what it creates. The seam for API keys (accounts issue): until
    keys exist every caller is the single anonymous account."""
    return ANONYMOUS_OWNER


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return rid


def error_response(request: Request, status: int, code: str, detail: str, **extra) -> JSONResponse:
    rid = request_id_of(request)
    body = {"code": code, "detail": detail, "request_id": rid, **extra}
    return JSONResponse(status_code=status, content=body)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("request %s failed: %s", request_id_of(request), exc.detail, exc_info=exc)
    extra = {"errors": exc.errors} if isinstance(exc, RequestValidationFailed) else {}
    return error_response(request, exc.status, exc.code, exc.detail, **extra)


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    """A replica or actor this request needed died or is overloaded: retryable, never a 500."""
    logger.warning("request %s: a backend was unavailable (%s)", request_id_of(request), type(exc).__name__)
    return await _service_error(request, ServiceUnavailable("A backend replica is unavailable or overloaded; retry shortly."))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(request, 400, "INPUT_INVALID_JSON", "The request body is not valid JSON.")
    items = [
        {"field": ".".join(str(p) for p in e.get("loc", ())[1:]) or "body", "message": e.get("msg", ""), "type": e.get("type", "")}
        for e in errors[:20]
    ]
    summary = "; ".join(f"{i['field']}: {i['message']}" for i in items[:5])
    return error_response(request, 422, "INPUT_VALIDATION_FAILED", f"Invalid request: {summary}", errors=items)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "INPUT_TOO_LARGE"}
    return error_response(request, exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    logger.error("request %s failed with an internal error", rid, exc_info=exc)
    return error_response(
        request, 500, "INTERNAL_ERROR", f"An unexpected error occurred. If this persists, report request_id {rid}."
    )


def make_api(max_request_bytes: int = 256 * 1024 * 1024) -> FastAPI:
    api = FastAPI(
        strict_content_type=False,  # `curl -d` without a JSON Content-Type still works
        title="Classifier API (Jina-compatible, self-hosted)",
        version="0.1.0",
        description="Zero-shot and few-shot classification of text and images over embedding models, "
        "served by Ray Serve. Wire-compatible with Jina AI's Classifier API: change the base URL.",
    )
    api.state.max_request_bytes = max_request_bytes  # the Ingress sets its configured limit at start
    api.add_exception_handler(ServiceError, _service_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(BackPressureError, _unavailable)
    api.add_exception_handler(RayActorError, _unavailable)
    api.add_exception_handler(Exception, _unhandled)

    @api.middleware("http")
    async def _guard(request: Request, call_next):
        # The request id, decided once; oversized bodies refused before reading; any escaped error -> Jina's 500.
        request_id_of(request)
        limit = request.app.state.max_request_bytes
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            return error_response(request, 413, "INPUT_TOO_LARGE", f"Request body over {limit} bytes.")
        try:
            return await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never an HTML 500
            return await _unhandled(request, exc)

    return api


api = make_api()


class HandleEmbedder:
    """The services' Embedder over the embedder deployments' handles (one per served model)."""

    def __init__(self, handles: dict[str, DeploymentHandle]):
        self.handles = handles

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self.handles[model].embed.remote(request)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        return await self.handles[model].embed_images.remote(request)


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """Composes the services from typed config; each route is validation + one service call."""

    def __init__(
        self, embedders: dict[str, DeploymentHandle], config: AppConfig, model_cards: dict[str, dict], generation: int
    ):
        self.config = config
        self.registry = config.registry()
        self.model_cards = model_cards
        self._embedders = embedders
        api.state.max_request_bytes = config.ingress.max_request_bytes
        self.vectors = Vectors(HandleEmbedder(embedders), config.limits, LabelCache(config.ingress.label_cache_size))
        self.repo = ShardedRepo(open_blob_store(config.state.store_url), config.state, config.limits, generation=generation)
        self.zeroshot = ZeroShotService(registry=self.registry, limits=config.limits, vectors=self.vectors)
        self.fewshot = FewShotService(registry=self.registry, limits=config.limits, vectors=self.vectors, repo=self.repo)
        logger.info("Ingress config (generation %d): %s", generation, config.model_dump_json())

    @api.post("/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True)
    async def classify(
        self, body: ClassifyRequest, authorization: Optional[str] = Header(default=None)
    ) -> ClassificationResponse:
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
        if body.classifier_id is not None:
            return await self.fewshot.classify(body, principal_of(authorization))
        return await self.zeroshot.classify(body)

    @api.post("/v1/train", response_model=TrainingResponse)
    async def train(self, body: TrainRequest, authorization: Optional[str] = Header(default=None)) -> TrainingResponse:
        """Create a few-shot classifier (`model` + labeled `input`), or update one (`classifier_id` + `input`).

        Learning is one-pass online: examples update the classifier's statistics and are dropped. New labels
        may be added in any update. `num_iters` (default 10) weights this batch: weight = num_iters / 10.

            curl -s http://127.0.0.1:8000/v1/train -H 'Content-Type: application/json' -d '{
              "model": "multilingual-e5-small", "access": "private", "num_iters": 10,
              "input": [{"text": "Rain all day tomorrow", "label": "weather"},
                        {"text": "The striker scored twice", "label": "sport"}]}'
        """
        return await self.fewshot.train(body, principal_of(authorization))

    @api.get("/v1/classifiers", response_model=list[ClassifierSummary])
    async def list_classifiers(self, authorization: Optional[str] = Header(default=None)) -> list[ClassifierSummary]:
        """The caller's classifiers with Jina's summary fields (`curl -s http://127.0.0.1:8000/v1/classifiers`)."""
        return await self.fewshot.list(principal_of(authorization))

    @api.post("/v1/classifiers", response_model=list[ClassifierSummary])
    async def list_classifiers_post(self, authorization: Optional[str] = Header(default=None)) -> list[ClassifierSummary]:
        """Same as GET (Jina's spec offers both)."""
        return await self.fewshot.list(principal_of(authorization))

    @api.delete("/v1/classifiers/{classifier_id}", response_model=DeleteResponse)
    async def delete_classifier(self, classifier_id: str, authorization: Optional[str] = Header(default=None)) -> DeleteResponse:
        """Delete a classifier from memory and the store: `curl -X DELETE .../v1/classifiers/<id>`."""
        return await self.fewshot.delete(classifier_id, principal_of(authorization))

    @api.get("/v1/models")
    async def models(self) -> dict:
        """Models this deployment serves, and what each name (aliases included) really runs.

            curl -s http://127.0.0.1:8000/v1/models
        """
        return {"object": "list", "data": list(self.model_cards.values())}

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str) -> dict:
        """One model's card, e.g. `curl -s http://127.0.0.1:8000/v1/models/multilingual-e5-small`."""
        self.registry.get(model_id)  # an unknown name raises INPUT_MODEL_NOT_FOUND, listing the known ones
        return self.model_cards[model_id]

    @api.get("/health")
    async def health(self) -> dict:
        """Liveness of the ingress (same as /live)."""
        return {"status": "ok"}

    @api.get("/live")
    async def live(self) -> dict:
        """The ingress process is up."""
        return {"status": "ok"}

    @api.get("/ready")
    async def ready(self) -> dict:
        """200 once every served model is loaded and answering; 503 with the missing ones otherwise."""
        names = list(self._embedders)
        results = await asyncio.gather(
            *(asyncio.wait_for(self._embedders[n].ready.remote(), timeout=5) for n in names), return_exceptions=True
        )
        missing = [n for n, r in zip(names, results) if r is not True]
        if missing:
            raise ServiceUnavailable(f"models not ready: {missing}")
        return {"status": "ready", "models": names}

    @api.get("/v1/stats")
    async def stats(self) -> dict:
        """Batching and cache statistics (per replica answering): proof that requests are coalesced."""
        names = list(self._embedders)
        embedders = await asyncio.gather(*(self._embedders[n].stats.remote() for n in names))
        return {
            "embedders": dict(zip(names, embedders)),
            "label_cache": self.vectors.label_cache.stats(),
            "classifier_shards": await self.repo.stats(),
        }
