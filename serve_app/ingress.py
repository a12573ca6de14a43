"""The HTTP ingress: routes, request ids, authentication, body limits, and the one place errors become status codes.

``Ingress`` is the Serve deployment that receives every HTTP request (and every Python ``DeploymentHandle``
call): it decides who the caller is and admits the request under its limits (the accounts gate,
``classifiers/accounts/gate.py``), validates the request (pydantic, Jina's wire models), hands it to the zero-shot or
few-shot service (``classifiers/``), charges the usage of a successful one, and maps the services' typed errors
to Jina's body ``{"code", "detail", "request_id"}`` (plus ``errors`` for schema failures). The request id is
decided once per request: the ``X-Request-ID`` header the proxy passes in (the client's, else the one Ray Serve
assigned, which the proxy also returns as the response's ``X-Request-ID``), else a new one. It is for tracing only
(echoed, logged): clients and proxies set it with no promise of one id per operation, so it never deduplicates
anything. ``/train``'s retry key is the ``Idempotency-Key`` header alone.

Python callers (a ``DeploymentHandle``) call the methods without the ``http_`` prefix and say who they are
explicitly: ``api_key=`` (verified like a header) or ``account_id=`` (a trusted in-cluster caller acting as that
account). With keys required, a handle call without either is refused: there is no silent anonymous fallback.
"""

import asyncio
import hashlib
import logging
import math
import time
import uuid
from typing import Awaitable, Callable, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from classifiers.accounts.gate import AccountsGate, Ticket
from classifiers.accounts.keys import AccountStore, Authenticator, Principal
from classifiers.accounts.ratelimit import LeaseLimiter, Mode
from classifiers.accounts.usage import UsageMeter
from classifiers.embedding.batch import EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.embedding.service import EmbeddingsService
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.fewshot.service import FewShotService
from classifiers.protocol.errors import (
    REQUEST_LIMIT,
    AuthError,
    IdempotencyKeyInUse,
    InvalidInput,
    MissingApiKey,
    RateLimited,
    RequestValidationFailed,
    ServiceError,
    ServiceTimeout,
    ServiceUnavailable,
)
from classifiers.protocol.wire import (
    ClassificationResponse,
    ClassifierSummary,
    ClassifyRequest,
    DeleteResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorResponse,
    TrainingResponse,
    TrainRequest,
    UsageReport,
)
from classifiers.storage.store import open_blob_store
from classifiers.zeroshot.service import ZeroShotService
from deployments.accounts_actor import RemoteAccounts
from deployments.classifier_shards import ShardedRepo
from deployments.metrics import IngressMetrics
from deployments.process import memory
from serve_app.config import AppConfig

logger = logging.getLogger("ray.serve")
R = TypeVar("R")
MAX_IDEMPOTENCY_KEY = 255


def request_id_of(request: Request) -> str:
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    return rid


def error_response(request: Request, status: int, code: str, detail: str, *, headers=None, **extra) -> JSONResponse:
    rid = request_id_of(request)
    body = {"code": code, "detail": detail, "request_id": rid, **extra}
    return JSONResponse(status_code=status, content=body, headers=headers)


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    if exc.status >= 500:
        logger.error("request %s failed: %s", request_id_of(request), exc.detail, exc_info=exc)
    extra = {"errors": exc.errors} if isinstance(exc, RequestValidationFailed) else {}
    headers = None
    if isinstance(exc, RateLimited):
        headers = {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    elif isinstance(exc, IdempotencyKeyInUse):
        headers = {"Retry-After": "1"}  # the first request with the key is being applied: about a second
    elif exc.status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return error_response(request, exc.status, exc.code, exc.detail, headers=headers, **extra)


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
    # 400 here is only FastAPI failing to read the body (e.g. not UTF-8): the same as invalid JSON to a client.
    codes = {400: "INPUT_INVALID_JSON", 404: "RESOURCE_NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "INPUT_TOO_LARGE",
             503: "SERVICE_UNAVAILABLE"}
    details = {400: "The request body is not valid JSON (UTF-8).",
               413: f"Request body over {request.app.state.max_request_bytes} bytes."}
    detail = details.get(exc.status_code, str(exc.detail))
    return error_response(request, exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), detail)


async def _unhandled(request: Request, exc: Exception) -> JSONResponse:
    rid = request_id_of(request)
    logger.error("request %s failed with an internal error", rid, exc_info=exc)
    return error_response(
        request, 500, "INTERNAL_ERROR", f"An unexpected error occurred. If this persists, report request_id {rid}."
    )


class BodyLimit(RequestBodyLimitMiddleware):
    """Starlette's body limit, counted as the body arrives (a chunked upload without Content-Length is bounded
    too), at the limit the Ingress configured at start (``api.state.max_request_bytes``); and a budget for all
    bodies in flight on this replica together (``api.state.max_inflight_body_bytes``): beyond it a request is
    refused with a retryable 503 while its body arrives, so concurrent large requests cannot exhaust the replica."""

    def __init__(self, app, api: FastAPI):
        super().__init__(app, max_body_size=api.state.max_request_bytes)
        self._api = api
        self.inflight_bytes = 0

    async def __call__(self, scope, receive, send):
        self.max_body_size = self._api.state.max_request_bytes
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        budget, mine = self._api.state.max_inflight_body_bytes, 0

        async def counted():
            nonlocal mine
            message = await receive()
            if message["type"] == "http.request":
                n = len(message.get("body", b""))
                if self.inflight_bytes + n > budget and mine + n <= self.max_body_size:
                    raise StarletteHTTPException(503, "Too many large requests in flight on this replica; retry shortly.")
                mine += n
                self.inflight_bytes += n
            return message

        try:
            await super().__call__(scope, counted, send)
        finally:
            self.inflight_bytes -= mine


ERROR_STATUSES = {
    400: "Invalid input (INPUT_*), e.g. unknown model, bad labels, too many inputs, invalid JSON.",
    401: "Keys required and missing, malformed or unknown (AUTH_*).",
    403: "Classifier limit, spent balance, or admin route without an admin key (AUTHZ_*).",
    404: "Unknown route, or a classifier that does not exist or is not the caller's (RESOURCE_NOT_FOUND).",
    413: "Body over the size limit (INPUT_TOO_LARGE).",
    409: "/train: a request with this Idempotency-Key is still being applied; retry shortly (CONFLICT_RESOURCE_BUSY).",
    422: "Wrong types or shape (INPUT_VALIDATION_FAILED, with `errors`); /train: the Idempotency-Key was used with "
    "another body (INPUT_IDEMPOTENCY_KEY_REUSED).",
    429: "Over a rate limit or the per-client concurrency (RATE_*; Retry-After says when).",
    503: "Overloaded, restarting or store unreachable: retry (SERVICE_UNAVAILABLE).",
    504: "Took longer than the request timeout (SERVICE_TIMEOUT).",
}


def make_api(max_request_bytes: int = 64 * 1024 * 1024, max_inflight_body_bytes: int | None = None) -> FastAPI:
    api = FastAPI(
        responses={status: {"model": ErrorResponse, "description": d} for status, d in ERROR_STATUSES.items()},
        strict_content_type=False,  # `curl -d` without a JSON Content-Type still works
        title="Classifier API (Jina-compatible, self-hosted)",
        version="0.1.0",
        description="Zero-shot and few-shot classification of text and images over embedding models, "
        "served by Ray Serve. Wire-compatible with Jina AI's Classifier API: change the base URL. "
        "With keys required, send `Authorization: Bearer <key>` (keys from `./scripts/keys create`).",
    )
    api.state.max_request_bytes = max_request_bytes  # the Ingress sets its configured limits at start
    api.state.max_inflight_body_bytes = max_inflight_body_bytes or 4 * max_request_bytes
    # Starlette types every handler as taking any Exception; each of these is registered for its own class only.
    api.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    api.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    api.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    api.add_exception_handler(BackPressureError, _unavailable)
    api.add_exception_handler(RayActorError, _unavailable)
    api.add_exception_handler(Exception, _unhandled)
    api.add_middleware(BodyLimit, api=api)  # inside _guard: a body over the limit is counted while it arrives

    @api.middleware("http")
    async def _guard(request: Request, call_next):
        # The request id, decided once; oversized bodies refused before reading; the rate-limit headers the
        # route left in request.state; any escaped error -> Jina's 500.
        request_id_of(request)
        limit = request.app.state.max_request_bytes
        length = request.headers.get("content-length")
        if length and length.isascii() and length.isdigit() and int(length) > limit:
            return error_response(request, 413, "INPUT_TOO_LARGE", f"Request body over {limit} bytes.")
        gate = getattr(request.app.state, "gate", None)
        path = request.scope["path"][len(request.scope.get("root_path", "")):]
        if gate is not None and path.startswith("/v1/"):
            # Who is calling, before the body is read or validated: without a valid key a client gets its 401,
            # never a 422 about a body it may not send, and never makes the ingress parse it.
            try:
                request.state.principal = await gate.principal(request.headers.get("authorization"), _client_ip(request))
            except AuthError as exc:
                return await _service_error(request, exc)
        started = time.perf_counter()
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - the last line of defence: never an HTML 500
            response = await _unhandled(request, exc)
        response.headers.update(getattr(request.state, "rate_headers", None) or {})
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            route = getattr(request.scope.get("route"), "path", "unmatched")
            model = getattr(request.state, "model", "")
            metrics.http(route, request.method, response.status_code, model, 1000 * (time.perf_counter() - started))
        return response

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


def _client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    """Composes the gate and the services from typed config; each route is auth + admission + one service call."""

    def __init__(
        self, embedders: dict[str, DeploymentHandle], config: AppConfig, model_cards: dict[str, dict], generation: int
    ):
        self.config = config
        self.registry = config.registry()
        self.model_cards = model_cards
        self._embedders = embedders
        api.state.max_request_bytes = config.ingress.max_request_bytes
        api.state.max_inflight_body_bytes = config.ingress.max_inflight_body_bytes
        blobs = open_blob_store(config.state.store_url)
        self.vectors = Vectors(HandleEmbedder(embedders), config.limits, LabelCache(config.ingress.label_cache_size, config.ingress.label_cache_bytes))
        self.repo = ShardedRepo(blobs, config.state, config.limits, generation=generation)
        self.zeroshot = ZeroShotService(registry=self.registry, limits=config.limits, vectors=self.vectors)
        self.fewshot = FewShotService(registry=self.registry, limits=config.limits, vectors=self.vectors, repo=self.repo)
        self.embeddings_service = EmbeddingsService(registry=self.registry, limits=config.limits, vectors=self.vectors)
        acfg = config.accounts
        self.accounts = RemoteAccounts(blobs, acfg)
        self.gate = AccountsGate(
            acfg,
            auth=Authenticator(
                AccountStore(blobs), require_keys=acfg.require_keys, local_only=not acfg.allow_anonymous,
                ttl_s=acfg.key_cache_ttl_s,
            ),
            limiter=LeaseLimiter(self.accounts, lease_fraction=acfg.lease_fraction, lease_ttl_s=acfg.lease_ttl_s),
            meter=UsageMeter(self.accounts, spent_ttl_s=acfg.key_cache_ttl_s),
        )
        self.metrics = api.state.metrics = IngressMetrics()
        api.state.gate = self.gate
        self._maintenance: asyncio.Task | None = None
        self._inflight = 0
        self._inflight_by_client: dict[str, int] = {}
        self.shed = {"overloaded": 0, "client_concurrency": 0, "timeouts": 0}
        mode = "keys required" if acfg.require_keys else "ANONYMOUS mode (every caller is one account; --require-keys to change)"
        logger.info("Ingress config (generation %d, %s): %s", generation, mode, config.model_dump_json())

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
            await asyncio.sleep(self.config.accounts.usage_flush_s)
            await self.gate.maintain()
            cache = self.vectors.label_cache
            self.metrics.label_cache_totals(cache.hits, cache.misses)

    # -- who is calling ---------------------------------------------------------------------------------------
    async def _http_principal(self, request: Request) -> Principal:
        self._maintain()
        principal = getattr(request.state, "principal", None)  # decided by the middleware, before the body
        return principal or await self.gate.principal(request.headers.get("authorization"), _client_ip(request))

    async def _handle_principal(self, api_key: str | None, account_id: str | None) -> Principal:
        self._maintain()
        if api_key is not None:
            return Principal.of_key(await self.gate.auth.verify(api_key))
        if account_id is not None:
            try:
                return Principal.of_account(account_id)
            except ValueError:
                raise InvalidInput("account_id must be an account UUID") from None
        if self.config.accounts.require_keys:
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

    async def _admitted(
        self, principal: Principal, mode: Mode, work: Callable[[Ticket], Awaitable[R]], charge: Callable[[R], int | None],
        request: Request | None = None, *, model: str = "", inputs: int = 0, op: str | None = None,
    ) -> R:
        """Shed load (503 / 429 per client) and admit (limits 429, balance 403) before any model work, run under the
        request timeout (504), and charge only what succeeded."""
        cfg, client = self.config.ingress, principal.rate_subject
        if self._inflight >= cfg.max_inflight:
            self.shed["overloaded"] += 1
            self.metrics.refused("SERVICE_UNAVAILABLE")
            raise ServiceUnavailable("This replica is at capacity; retry shortly.")
        if self._inflight_by_client.get(client, 0) >= cfg.max_inflight_per_client:
            self.shed["client_concurrency"] += 1
            self.metrics.refused("CLIENT_CONCURRENCY")
            raise RateLimited(
                f"Too many concurrent requests: at most {cfg.max_inflight_per_client} in flight per client.",
                code=REQUEST_LIMIT, retry_after_s=1.0,
            )
        self._inflight += 1
        self._inflight_by_client[client] = self._inflight_by_client.get(client, 0) + 1
        try:
            try:
                ticket = await self.gate.admit(principal, mode)
            except ServiceError as exc:
                self.metrics.refused(exc.code)
                if request is not None and isinstance(exc, RateLimited):
                    request.state.rate_headers = self.gate.refused_headers(principal, mode)
                raise
            try:
                result = await asyncio.wait_for(work(ticket), cfg.request_timeout_s)
            except asyncio.TimeoutError:
                self.shed["timeouts"] += 1
                ticket.refund()  # a failed request is never charged, even if its update was applied meanwhile
                raise ServiceTimeout(
                    f"The request did not finish within {cfg.request_timeout_s:g}s. A /train may still have been "
                    "applied: retry it with the same Idempotency-Key."
                ) from None
            except ServiceError:
                ticket.refund()  # failed requests (any 4xx/5xx) are never charged
                raise
            finally:
                if request is not None:
                    request.state.rate_headers = ticket.headers()
            tokens = charge(result)
            if tokens is None:  # paid before (an idempotent replay): not again
                ticket.refund()
            else:
                ticket.done(tokens)
            self.metrics.served(mode, model, inputs, tokens or 0)
            if op is not None:
                self.metrics.op(op)
            if request is not None:
                request.state.rate_headers = ticket.headers()
            return result
        finally:
            self._inflight -= 1
            left = self._inflight_by_client[client] - 1
            if left:
                self._inflight_by_client[client] = left
            else:
                del self._inflight_by_client[client]

    # -- the operations, for HTTP routes and Python handle callers alike ---------------------------------------
    async def _classify(self, body: ClassifyRequest, principal: Principal, request: Request | None) -> ClassificationResponse:
        model, inputs = self._model_tag(body.model, request), _count(body.input)
        if body.classifier_id is not None:
            return await self._admitted(
                principal, "fewshot", lambda t: self.fewshot.classify(body, principal.account_id, max_tokens=t.token_budget),
                lambda r: r.usage.total_tokens, request, op="classify", model=model, inputs=inputs,
            )
        return await self._admitted(
            principal, "zeroshot", lambda t: self.zeroshot.classify(body, max_tokens=t.token_budget),
            lambda r: r.usage.total_tokens, request, model=model, inputs=inputs,
        )

    async def _train(
        self, body: TrainRequest, principal: Principal, idempotency_key: str | None, request: Request | None
    ) -> TrainingResponse:
        update_id = update_id_of(principal, idempotency_key)
        return await self._admitted(
            principal, "train",
            # Charged when the update is submitted to the state shard, not when it returns: an update the client
            # abandons (disconnects) after submitting is applied by the shard and paid for, so a retry with the same
            # key (a free replay) gets nothing for free. Failed requests (4xx/5xx, the 409 and 422 of a key in use or
            # reused with another body included: they applied nothing) and replays are refunded.
            lambda t: self.fewshot.train(body, principal.account_id, update_id=update_id, max_tokens=t.token_budget,
                                         on_submit=t.done),
            lambda r: None if r.replayed() else r.usage.total_tokens, request, model=self._model_tag(body.model, request), inputs=_count(body.input),
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
        return await self._admitted(
            principal, "embeddings", lambda t: self.embeddings_service.embed(body, max_tokens=t.token_budget),
            lambda r: r.usage.total_tokens, request, model=self._model_tag(body.model, request), inputs=_count(body.input),
        )

    async def list_classifiers(self, *, api_key: str | None = None, account_id: str | None = None) -> list[ClassifierSummary]:
        return await self.fewshot.list((await self._handle_principal(api_key, account_id)).account_id)

    async def delete_classifier(
        self, classifier_id: str, *, api_key: str | None = None, account_id: str | None = None
    ) -> DeleteResponse:
        return await self.fewshot.delete(classifier_id, (await self._handle_principal(api_key, account_id)).account_id)

    # -- HTTP -----------------------------------------------------------------------------------------------
    @api.post("/v1/classify", response_model=ClassificationResponse, response_model_exclude_none=True)
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

    @api.post("/v1/train", response_model=TrainingResponse)
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

    @api.post("/v1/embeddings", response_model=EmbeddingsResponse)
    async def http_embeddings(self, body: EmbeddingsRequest, request: Request) -> EmbeddingsResponse:
        """Embed texts (and images, for CLIP models) with any served model, in Jina's format.

        Served by the same embedder replicas and batches as classify. `embedding_type` is `float` (default),
        `base64`, `binary` or `ubinary` (or a list of them); `dimensions` truncates Matryoshka models only.

            curl -s http://127.0.0.1:8000/v1/embeddings -H 'Content-Type: application/json' -d '{
              "model": "all-MiniLM-L6-v2", "input": ["Will it rain tomorrow?"]}'
        """
        return await self._embed(body, await self._http_principal(request), request)

    @api.get("/v1/classifiers", response_model=list[ClassifierSummary])
    async def http_list_classifiers(self, request: Request) -> list[ClassifierSummary]:
        """The caller's classifiers with Jina's summary fields (`curl -s http://127.0.0.1:8000/v1/classifiers`)."""
        return await self.fewshot.list((await self._http_principal(request)).account_id)

    @api.post("/v1/classifiers", response_model=list[ClassifierSummary])
    async def http_list_classifiers_post(self, request: Request) -> list[ClassifierSummary]:
        """Same as GET (Jina's spec offers both)."""
        return await self.fewshot.list((await self._http_principal(request)).account_id)

    @api.delete("/v1/classifiers/{classifier_id}", response_model=DeleteResponse)
    async def http_delete_classifier(self, classifier_id: str, request: Request) -> DeleteResponse:
        """Delete a classifier from memory and the store: `curl -X DELETE .../v1/classifiers/<id>`."""
        response = await self.fewshot.delete(classifier_id, (await self._http_principal(request)).account_id)
        self.metrics.op("delete")
        return response

    @api.get("/v1/usage", response_model=UsageReport)
    async def http_usage(self, request: Request) -> UsageReport:
        """What the caller's key has been charged (ours): tokens and requests, per mode, and the balance left.

            curl -s http://127.0.0.1:8000/v1/usage -H "Authorization: Bearer $KEY"
        """
        principal = await self._http_principal(request)
        e = await self.gate.meter.usage(principal.subject, principal.account_id)
        left = None if principal.balance is None else principal.balance - e["tokens"]
        return UsageReport(key_id=principal.subject, account_id=e["account_id"], tokens=e["tokens"],
                           requests=e["requests"], by_mode=e["by_mode"], balance=principal.balance, balance_left=left)

    @api.get("/v1/models")
    async def models(self, request: Request) -> dict:
        """Models this deployment serves, and what each name (aliases included) really runs.

            curl -s http://127.0.0.1:8000/v1/models
        """
        await self._http_principal(request)
        return {"object": "list", "data": list(self.model_cards.values())}

    @api.get("/v1/models/{model_id}")
    async def model(self, model_id: str, request: Request) -> dict:
        """One model's card, e.g. `curl -s http://127.0.0.1:8000/v1/models/multilingual-e5-small`."""
        await self._http_principal(request)
        self.registry.get(model_id)  # an unknown name raises INPUT_MODEL_NOT_FOUND, listing the known ones
        return self.model_cards[model_id]

    @api.get("/playground", include_in_schema=False)
    async def playground(self):
        """The browser playground (serve_app/playground.html): open like /docs; its API calls need a key as usual."""
        from pathlib import Path  # local imports keep the playground one self-contained insertion

        from fastapi.responses import HTMLResponse

        if getattr(self, "_playground_html", None) is None:  # read once per replica
            self._playground_html = (Path(__file__).parent / "playground.html").read_text(encoding="utf-8")
        return HTMLResponse(self._playground_html)

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
        missing = [n for n, r in zip(names, results, strict=True) if r is not True]
        if missing:
            raise ServiceUnavailable(f"models not ready: {missing}")
        return {"status": "ready", "models": names}

    @api.get("/v1/stats")
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
            "shed": dict(self.shed),
            "ingress": {"inflight": self._inflight, **memory()},
            "usage_flush_failures": self.gate.meter.failed_flushes,
        }
