"""What both clients share: their settings, the one :class:`Call` each public method builds, and reading answers.

``Client`` and ``AsyncClient`` differ only in how they send a call (``sync_client.py``, ``async_client.py``), so
everything else, from the request body to the typed result or :class:`~classifier_client.errors.ApiError`, is
here once and behaves the same in both.
"""
from __future__ import annotations

import os
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import httpx
from pydantic import ValidationError

from classifier_client.bodies import classify_body, embeddings_body, train_body
from classifier_client.errors import ApiConnectionError, ApiError
from classifier_client.responses import parse_list, parse_models, parse_train
from classifier_client.retry import IDEMPOTENT_RETRY_STATUSES, RETRY_STATUSES, RetryPolicy
from classifiers.protocol.wire import ClassificationResponse, DeleteResponse, EmbeddingsResponse, UsageReport

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_API_KEY = "CLASSIFIER_API_KEY"
ENV_URL = "CLASSIFIER_URL"
USER_AGENT = f"ray-classifier-client/0.1 httpx/{httpx.__version__}"


@dataclass
class Call:
    """One API call: what to send, how to read a success, and whether it may be sent again."""

    method: str
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    parse: Callable[[Any], Any] = lambda body: body
    resend_safe: bool = False  # a request that may have reached the server may be sent again
    retry_statuses: frozenset[int] = RETRY_STATUSES


class ClientBase:
    """Settings, headers, the calls of the public methods, and how an answer becomes a result or an error."""

    def __init__(
        self, base_url: str | None = None, api_key: str | None = None, *, timeout: float | httpx.Timeout = 60.0,
        max_retries: int = 3, max_retry_wait: float = 30.0, backoff: float = 0.5, headers: Mapping[str, str] | None = None,
    ):
        self.base_url = (base_url or os.environ.get(ENV_URL) or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = os.environ.get(ENV_API_KEY) if api_key is None else api_key
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self.last_response: httpx.Response | None = None
        self._headers = {"User-Agent": USER_AGENT, "Accept": "application/json", **(headers or {})}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r}, api_key={'set' if self.api_key else None})"

    # Every public method builds one Call here; Client and AsyncClient only differ in how they send it.
    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _classify_call(self, inputs, labels, model, classifier_id, abstain, multi_label=None) -> Call:
        body = classify_body(inputs, labels=labels, model=model, classifier_id=classifier_id, abstain=abstain,
                             multi_label=multi_label)
        return Call("POST", "/v1/classify", body, parse=ClassificationResponse.model_validate)

    def _train_call(self, examples, model, classifier_id, access, num_iters, labels, idempotency_key,
                    learn_from_inputs=None) -> Call:
        body = train_body(examples, model=model, classifier_id=classifier_id, access=access, num_iters=num_iters, labels=labels,
                          learn_from_inputs=learn_from_inputs)
        key = idempotency_key or uuid.uuid4().hex
        return Call("POST", "/v1/train", body, {"Idempotency-Key": key}, parse=parse_train, resend_safe=True,
                     retry_statuses=IDEMPOTENT_RETRY_STATUSES)

    def _list_call(self) -> Call:
        return Call("GET", "/v1/classifiers", parse=parse_list, resend_safe=True)

    def _delete_call(self, classifier_id: str) -> Call:
        if not classifier_id or "/" in classifier_id:
            raise ValueError(f"not a classifier id: {classifier_id!r}")
        parse = lambda body: DeleteResponse.model_validate({"classifier_id": classifier_id, **(body or {})})  # noqa: E731
        return Call("DELETE", f"/v1/classifiers/{urllib.parse.quote(classifier_id, safe='')}", parse=parse)

    def _models_call(self) -> Call:
        return Call("GET", "/v1/models", resend_safe=True, parse=parse_models)

    def _usage_call(self) -> Call:
        return Call("GET", "/v1/usage", resend_safe=True, parse=UsageReport.model_validate)

    def _embeddings_call(self, inputs, model, options) -> Call:
        return Call("POST", "/v1/embeddings", embeddings_body(inputs, model=model, **options),
                     parse=EmbeddingsResponse.model_validate)

    def _retry_policy(self, call: Call) -> RetryPolicy:
        return RetryPolicy(call.method, resend_safe=call.resend_safe, statuses=call.retry_statuses,
                           max_retries=self.max_retries, max_retry_wait=self.max_retry_wait, backoff=self.backoff)

    def _result(self, call: Call, response: httpx.Response) -> Any:
        self.last_response = response
        if not response.is_success:
            raise ApiError.from_response(response)
        try:
            body = response.json()
        except ValueError:
            raise ApiError(response.status_code, "INVALID_RESPONSE", f"{call.method} {call.path} answered non-JSON: "
                           f"{response.text[:200]!r}", request_id=response.headers.get("x-request-id")) from None
        try:
            return call.parse(body)
        except (ValidationError, TypeError, KeyError) as e:
            raise ApiError(response.status_code, "INVALID_RESPONSE", f"{call.method} {call.path}: unexpected response "
                           f"shape: {e}", request_id=response.headers.get("x-request-id"), body=body) from e

    @staticmethod
    def _connection_error(call: Call, exc: httpx.TransportError) -> ApiConnectionError:
        code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
        return ApiConnectionError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}".rstrip(": "), code=code)

