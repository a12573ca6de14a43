"""Python client for the classification service's HTTP API (Jina's Classifier API plus our extensions).

``Client`` (sync) and ``AsyncClient`` (async) wrap httpx and return the typed pydantic models of
``classifiers/protocol/wire.py``, the same ones the service builds its responses from::

    from serve_app.client import ApiError, Client

    with Client("http://127.0.0.1:8000") as c:          # api_key defaults to $CLASSIFIER_API_KEY
        r = c.classify(["Will it rain tomorrow?"], labels=["weather", "sport"], model="multilingual-e5-small")
        print(r.data[0].prediction, r.data[0].score)     # ClassificationResponse
        t = c.train([("Rain all day", "weather"), ("The striker scored", "sport")], model="all-MiniLM-L6-v2")
        c.classify(["Snow tonight?"], classifier_id=t.classifier_id)
        for s in c.list():                               # list[ClassifierSummary]
            print(s.classifier_id, s.labels)
        c.delete(t.classifier_id)                        # DeleteResponse

    async with AsyncClient() as c:                       # the same methods, awaited
        r = await c.classify(["Will it rain tomorrow?"], labels=["weather", "sport"], model="all-MiniLM-L6-v2")

**Same wire format as Jina.** Requests carry only the fields the caller set (plus Jina's own defaults), so the
client also works against ``https://api.jina.ai`` by base URL; our extensions (``abstain`` on classify,
declared ``labels`` on train) are sent only when given. Responses from Jina that lack our extra fields
(``num_samples`` in a listing, ``usage`` on train, ``classifier_id`` on delete) still parse.

**Errors** are :class:`ApiError` (``status``, ``code``, ``detail``, ``request_id``, ``retry_after``, and
``errors`` for 422s), built from the service's body ``{"code", "detail", "request_id"}``; a request that never
got an HTTP answer raises :class:`ApiConnectionError` (a subclass, ``status`` 0).

**Retries.** 429, 503 and 504 are retried up to ``max_retries`` times, waiting what ``Retry-After`` says (else an
exponential backoff from ``backoff`` seconds); a ``Retry-After`` over ``max_retry_wait`` is not waited for: the
error is raised at once, with ``retry_after`` set. Connection failures (nothing was sent) are retried for every
call; read timeouts and dropped connections only where resending is safe: GETs and ``train``, which sends an
``Idempotency-Key`` (a fresh one per call, the same one on each retry of that call), so the service applies a
retried train once and answers the first response. A train also retries 409 ``CONFLICT_RESOURCE_BUSY``: its own
earlier attempt (say, one whose answer timed out) is still being applied, and the retry then gets its answer.
Both clients run this one policy (:class:`_RetryPolicy`, on tenacity's ``Retrying`` / ``AsyncRetrying``).
"""
from __future__ import annotations

import builtins  # for annotations in classes whose `list` method shadows the builtin
import email.utils
import math
import os
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import httpx
from pydantic import BaseModel, ValidationError
from tenacity import AsyncRetrying, RetryCallState, Retrying

from classifiers.protocol.wire import (
    Abstain,
    ClassificationResponse,
    ClassifierSummary,
    DeleteResponse,
    EmbeddingsResponse,
    MultiLabel,
    TrainingResponse,
    UsageReport,
)

__all__ = [
    "ApiError", "ApiConnectionError", "AsyncClient", "Client", "DEFAULT_BASE_URL", "ENV_API_KEY", "ENV_URL",
    "RETRY_STATUSES", "classify_body", "embeddings_body", "parse_retry_after", "retry_wait", "train_body",
]

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
ENV_API_KEY = "CLASSIFIER_API_KEY"
ENV_URL = "CLASSIFIER_URL"
RETRY_STATUSES = frozenset({429, 503, 504})
# + 409 for a call with an Idempotency-Key: the key's first request is still running, a retry gets its answer
IDEMPOTENT_RETRY_STATUSES = RETRY_STATUSES | {409}
USER_AGENT = f"ray-classifier-client/0.1 httpx/{httpx.__version__}"


# -- errors -----------------------------------------------------------------------------------------------------
class ApiError(Exception):
    """An error answer of the API (or, as :class:`ApiConnectionError`, no answer at all).

    ``code`` is Jina's machine-readable code (``INPUT_INVALID_LABELS``, ``RATE_REQUEST_LIMIT_EXCEEDED``, ...; see
    the README's error table); a body without one (a proxy's HTML page, FastAPI's default) gets ``HTTP_<status>``.
    ``retry_after`` is the parsed ``Retry-After`` header in seconds, or None. ``errors`` lists the fields of a 422.
    """

    def __init__(
        self, status: int, code: str, detail: str, *, request_id: str | None = None, retry_after: float | None = None,
        errors: list | None = None, body: Any = None,
    ):
        self.status = status
        self.code = code
        self.detail = detail
        self.request_id = request_id
        self.retry_after = retry_after
        self.errors = errors
        self.body = body
        super().__init__(str(self))

    def __str__(self) -> str:
        rid = f" (request_id {self.request_id})" if self.request_id else ""
        return f"{self.code}: {self.detail}{rid}"

    def __reduce__(self):  # picklable (multiprocessing, Ray tasks) despite the keyword-only fields
        return (_rebuild_api_error, (type(self), self.__dict__.copy()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status}, code={self.code!r}, detail={self.detail!r}, request_id={self.request_id!r})"

    @classmethod
    def from_response(cls, response: httpx.Response) -> "ApiError":
        """Build from an error response: Jina's body ``{"code", "detail", "request_id"}``, whatever else it is."""
        try:
            body = response.json()
        except ValueError:
            body = None
        code = detail = request_id = errors = None
        if isinstance(body, dict):
            code, detail, request_id, errors = body.get("code"), body.get("detail"), body.get("request_id"), body.get("errors")
            if detail is not None and not isinstance(detail, str):  # FastAPI's default 422: a list of dicts
                errors = errors if errors is not None else detail
                detail = "; ".join(str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail) \
                    if isinstance(detail, list) else str(detail)
        if not detail:
            text = response.text.strip()
            detail = " ".join(text.split())[:500] if text else (response.reason_phrase or "error")
        return cls(
            response.status_code,
            str(code) if code else f"HTTP_{response.status_code}",
            detail,
            request_id=request_id or response.headers.get("x-request-id"),
            retry_after=parse_retry_after(response.headers.get("retry-after")),
            errors=errors if isinstance(errors, list) else None,
            body=body,
        )


def _rebuild_api_error(cls: type[ApiError], state: dict) -> ApiError:
    err = ApiError.__new__(cls)
    err.__dict__.update(state)
    Exception.__init__(err, str(err))
    return err


class ApiConnectionError(ApiError):
    """No HTTP answer: the connection failed, timed out or was dropped (after any retries)."""

    def __init__(self, detail: str, *, code: str = "CONNECTION_ERROR"):
        super().__init__(0, code, detail)


# -- pure helpers: Retry-After, retry decisions, request bodies ----------------------------------------------------
def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: delta-seconds (``"3"``, also ``"2.5"``) or an HTTP-date
    (``"Wed, 21 Oct 2015 07:28:00 GMT"``, counted from ``now``, default the current time). Past dates give 0;
    missing, negative or unparseable values give None."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None or when.tzinfo is None:  # RFC 9110 dates are GMT; a zone-less one is not one of them
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return seconds


def retry_wait(
    attempt: int, *, status: int | None = None, retry_after: float | None = None, max_retries: int = 3,
    max_retry_wait: float = 30.0, backoff: float = 0.5, max_backoff: float = 8.0,
    statuses: frozenset[int] = RETRY_STATUSES,
) -> float | None:
    """How long to wait before retry number ``attempt + 1`` of a failed attempt ``attempt`` (0-based), or None to
    give up. ``status`` is the HTTP status (None for a connection failure the caller deemed safe to resend).

    Retried: ``statuses`` (429/503/504; a train adds 409) and connection failures, at most ``max_retries`` times.
    The wait is ``retry_after`` when the server gave one (refused as None if over ``max_retry_wait``: waiting less
    would only fail again), else ``backoff * 2**attempt`` capped at ``min(max_backoff, max_retry_wait)``."""
    if attempt >= max_retries:
        return None
    if status is not None and status not in statuses:
        return None
    if retry_after is not None:
        return retry_after if retry_after <= max_retry_wait else None
    return min(backoff * (2 ** attempt), max_backoff, max_retry_wait)


def _item(x: Any) -> Any:
    if isinstance(x, BaseModel):
        return x.model_dump(exclude_none=True)
    if isinstance(x, str):
        return x
    if isinstance(x, Mapping):
        return dict(x)
    raise TypeError(f"an input is a string, {{'text': ...}}, {{'image': ...}} or a TextDoc/ImageDoc; got {type(x).__name__}")


def _inputs(inputs: Any) -> list:
    if isinstance(inputs, (str, Mapping, BaseModel)):
        return [_item(inputs)]
    return [_item(x) for x in inputs]


def _labels(labels: Any) -> list[str] | dict[str, list[str]]:
    if isinstance(labels, str):
        raise TypeError("labels is a list of strings or a dict of label groups, not one string")
    if isinstance(labels, Mapping):
        return {str(k): _labels(v) for k, v in labels.items()}  # type: ignore[misc]  # a group's labels are a list
    return [str(x) for x in labels]


def _example(x: Any) -> dict:
    if isinstance(x, BaseModel):
        return x.model_dump(exclude_none=True)
    if isinstance(x, Mapping):
        return dict(x)
    if isinstance(x, (tuple, list)) and len(x) == 2:
        return {"text": x[0], "label": x[1] if isinstance(x[1], str) else [str(lab) for lab in x[1]]}
    raise TypeError(
        f"a training example is (text, label or [labels]), {{'text'|'image', 'label'}} or a TrainingItem; got {x!r}"
    )


def classify_body(
    inputs: Any, *, labels: Any = None, model: str | None = None, classifier_id: str | None = None, abstain: Any = None,
    multi_label: Any = None,
) -> dict:
    """The JSON body of ``POST /v1/classify``: only the fields given (``abstain`` and ``multi_label`` are ours, sent
    only when set). ``abstain`` is an :class:`~classifiers.protocol.wire.Abstain`, a dict like
    ``{"false_alarm_rate": 0.05}``, or a float (taken as the false-alarm rate); ``multi_label`` is ``True``, a
    threshold (a float), a dict like ``{"threshold": 0.3}`` or a :class:`~classifiers.protocol.wire.MultiLabel`."""
    body: dict[str, Any] = {}
    if model is not None:
        body["model"] = model
    if classifier_id is not None:
        body["classifier_id"] = classifier_id
    body["input"] = _inputs(inputs)
    if labels is not None:
        body["labels"] = _labels(labels)
    if abstain is not None:
        if isinstance(abstain, (int, float)) and not isinstance(abstain, bool):
            abstain = {"false_alarm_rate": float(abstain)}
        body["abstain"] = abstain.model_dump(exclude_none=True) if isinstance(abstain, Abstain) else dict(abstain)
    if multi_label is not None and multi_label is not False:
        if isinstance(multi_label, (int, float)) and not isinstance(multi_label, bool):
            multi_label = {"threshold": float(multi_label)}
        body["multi_label"] = (multi_label.model_dump(exclude_none=True) if isinstance(multi_label, MultiLabel)
                               else multi_label if multi_label is True else dict(multi_label))
    return body


def train_body(
    examples: Iterable[Any], *, model: str | None = None, classifier_id: str | None = None, access: str | None = "private",
    num_iters: int | None = 10, labels: Sequence[str] | None = None, learn_from_inputs: bool | None = None,
) -> dict:
    """The JSON body of ``POST /v1/train``. A create (no ``classifier_id``) sends ``model`` (if given), ``access``,
    ``input`` and ``num_iters``; an update sends ``classifier_id``, ``input`` and ``num_iters`` (the model and access
    of a classifier are fixed at its creation). ``labels`` (declared classes, ours) and ``learn_from_inputs`` (ours)
    only when given."""
    body: dict[str, Any] = {}
    if classifier_id is not None:
        body["classifier_id"] = classifier_id
    else:
        if model is not None:
            body["model"] = model
        if access is not None:
            body["access"] = access
    body["input"] = [_example(x) for x in examples]
    if num_iters is not None:
        body["num_iters"] = num_iters
    if labels is not None:
        body["labels"] = _labels(labels)
    if learn_from_inputs is not None:
        body["learn_from_inputs"] = bool(learn_from_inputs)
    return body


def embeddings_body(inputs: Any, *, model: str, **options: Any) -> dict:
    """The JSON body of ``POST /v1/embeddings`` (Jina's format): ``model``, ``input`` and the options given
    (``task``, ``dimensions``, ``embedding_type``, ``normalized``, ``truncate``, ...); None values are left out."""
    return {"model": model, "input": _inputs(inputs), **{k: v for k, v in options.items() if v is not None}}


# -- response parsing (tolerant of Jina's hosted answers, which lack our extra fields) -------------------------------
class _HostedClassifierSummary(ClassifierSummary):
    """A listing entry from a service without our ``num_samples`` (Jina's hosted API): None there."""

    num_samples: int | None = None  # type: ignore[assignment]  # deliberately wider than the base model's int


def _parse_summary(d: Any) -> ClassifierSummary:
    if isinstance(d, dict) and "num_samples" not in d:
        return _HostedClassifierSummary.model_validate(d)
    return ClassifierSummary.model_validate(d)


def _parse_list(body: Any) -> list[ClassifierSummary]:
    if isinstance(body, dict) and isinstance(body.get("data"), list):  # tolerate a {"data": [...]} envelope
        body = body["data"]
    return [_parse_summary(d) for d in body]


def _parse_train(body: Any) -> TrainingResponse:
    if isinstance(body, dict) and "usage" not in body:  # optional in Jina's spec
        body = {**body, "usage": {"total_tokens": 0}}
    return TrainingResponse.model_validate(body)


# -- the calls -------------------------------------------------------------------------------------------------------
@dataclass
class _Call:
    method: str
    path: str
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    parse: Callable[[Any], Any] = lambda body: body
    resend_safe: bool = False  # a request that may have reached the server may be sent again
    retry_statuses: frozenset[int] = RETRY_STATUSES


class _RetryPolicy:
    """The client's one retry policy, for one call; :class:`Client` runs it on tenacity's ``Retrying``,
    :class:`AsyncClient` on ``AsyncRetrying`` (``tenacity_args``), so both retry exactly alike.

    After each attempt :func:`retry_wait` decides, from the outcome: a response with a status of
    ``call.retry_statuses`` waits its ``Retry-After`` (none over ``max_retry_wait``) or the exponential backoff; a
    transport error is retried only if the request never left (connect errors, pool timeouts) or resending it is
    safe (GETs, calls marked ``resend_safe``); at most ``max_retries`` retries. Anything else is final: a response
    is returned (an error status becomes :class:`ApiError` in the caller), an exception is raised as it is.
    (``httpx``'s ``request`` reads and closes each response, so a retried one holds no connection.)
    """

    _NEVER_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

    def __init__(self, call: _Call, *, max_retries: int, max_retry_wait: float, backoff: float):
        self.call = call
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.backoff = backoff
        self._next_wait = 0.0

    def next_wait(self, state: RetryCallState) -> float | None:
        """Seconds to wait before retrying the attempt that ended in ``state.outcome``, or None: it is final."""
        outcome = state.outcome
        if outcome is None:
            return None
        status = retry_after = None
        if outcome.failed:
            exc = outcome.exception()
            if not (isinstance(exc, httpx.TransportError) and self._may_resend(exc)):
                return None
        else:
            response: httpx.Response = outcome.result()
            if response.is_success:
                return None
            status, retry_after = response.status_code, parse_retry_after(response.headers.get("retry-after"))
        return retry_wait(
            state.attempt_number - 1, status=status, retry_after=retry_after, max_retries=self.max_retries,
            max_retry_wait=self.max_retry_wait, backoff=self.backoff, statuses=self.call.retry_statuses,
        )

    def _may_resend(self, exc: httpx.TransportError) -> bool:
        return isinstance(exc, self._NEVER_SENT) or self.call.resend_safe or self.call.method == "GET"

    # tenacity asks `retry` first, then `wait`, after each attempt: decide once, then hand out that wait
    def _retry(self, state: RetryCallState) -> bool:
        wait = self.next_wait(state)
        self._next_wait = wait or 0.0
        return wait is not None

    def _wait(self, state: RetryCallState) -> float:
        return self._next_wait

    def tenacity_args(self) -> dict[str, Any]:
        """Keyword arguments of ``tenacity.Retrying`` / ``AsyncRetrying``: no stop of tenacity's, since
        ``retry_wait`` already counts the attempts (the final outcome is returned or raised, never a RetryError)."""
        return {"retry": self._retry, "wait": self._wait}


class _Base:
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

    # Every public method builds one _Call here; Client and AsyncClient only differ in how they send it.
    def _url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def _classify_call(self, inputs, labels, model, classifier_id, abstain, multi_label=None) -> _Call:
        body = classify_body(inputs, labels=labels, model=model, classifier_id=classifier_id, abstain=abstain,
                             multi_label=multi_label)
        return _Call("POST", "/v1/classify", body, parse=ClassificationResponse.model_validate)

    def _train_call(self, examples, model, classifier_id, access, num_iters, labels, idempotency_key,
                    learn_from_inputs=None) -> _Call:
        body = train_body(examples, model=model, classifier_id=classifier_id, access=access, num_iters=num_iters, labels=labels,
                          learn_from_inputs=learn_from_inputs)
        key = idempotency_key or uuid.uuid4().hex
        return _Call("POST", "/v1/train", body, {"Idempotency-Key": key}, parse=_parse_train, resend_safe=True,
                     retry_statuses=IDEMPOTENT_RETRY_STATUSES)

    def _list_call(self) -> _Call:
        return _Call("GET", "/v1/classifiers", parse=_parse_list, resend_safe=True)

    def _delete_call(self, classifier_id: str) -> _Call:
        if not classifier_id or "/" in classifier_id:
            raise ValueError(f"not a classifier id: {classifier_id!r}")
        parse = lambda body: DeleteResponse.model_validate({"classifier_id": classifier_id, **(body or {})})  # noqa: E731
        return _Call("DELETE", f"/v1/classifiers/{urllib.parse.quote(classifier_id, safe='')}", parse=parse)

    def _models_call(self) -> _Call:
        return _Call("GET", "/v1/models", resend_safe=True)

    def _usage_call(self) -> _Call:
        return _Call("GET", "/v1/usage", resend_safe=True, parse=UsageReport.model_validate)

    def _embeddings_call(self, inputs, model, options) -> _Call:
        return _Call("POST", "/v1/embeddings", embeddings_body(inputs, model=model, **options),
                     parse=EmbeddingsResponse.model_validate)

    def _retry_policy(self, call: _Call) -> _RetryPolicy:
        return _RetryPolicy(call, max_retries=self.max_retries, max_retry_wait=self.max_retry_wait, backoff=self.backoff)

    def _result(self, call: _Call, response: httpx.Response) -> Any:
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
    def _connection_error(call: _Call, exc: httpx.TransportError) -> ApiConnectionError:
        code = "TIMEOUT" if isinstance(exc, httpx.TimeoutException) else "CONNECTION_ERROR"
        return ApiConnectionError(f"{call.method} {call.path}: {type(exc).__name__}: {exc}".rstrip(": "), code=code)


class Client(_Base):
    """Synchronous client. ``base_url`` defaults to ``$CLASSIFIER_URL``, else ``http://127.0.0.1:8000``;
    ``api_key`` to ``$CLASSIFIER_API_KEY`` (``api_key=""`` sends none). ``timeout`` is per attempt, in seconds.
    ``http_client`` lets you bring your own ``httpx.Client`` (proxies, TLS, event hooks); it is not closed here.
    ``last_response`` is the last raw ``httpx.Response`` received (what ``--json`` prints in the CLI)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, http_client: httpx.Client | None = None,
                 **kwargs: Any):
        super().__init__(base_url, api_key, **kwargs)
        self._own = http_client is None
        self._http = http_client or httpx.Client(timeout=self.timeout)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._own:
            self._http.close()

    def _run(self, call: _Call) -> Any:
        retrying = Retrying(**self._retry_policy(call).tenacity_args())
        try:
            response: httpx.Response = retrying(
                self._http.request, call.method, self._url(call.path), json=call.json,
                headers={**self._headers, **call.headers},
            )
        except httpx.TransportError as exc:
            raise self._connection_error(call, exc) from exc
        return self._result(call, response)

    def request(self, method: str, path: str, json: Any = None) -> Any:
        """Any route, raw: the decoded JSON body (e.g. ``request("GET", "/v1/stats")``); errors as :class:`ApiError`."""
        return self._run(_Call(method.upper(), path, json, resend_safe=method.upper() == "GET"))

    def classify(
        self, inputs: Any, labels: Any = None, model: str | None = None, classifier_id: str | None = None,
        abstain: Any = None, multi_label: Any = None,
    ) -> ClassificationResponse:
        """Zero-shot (``labels``: a list, or a dict of label groups, and ``model``) or few-shot
        (``classifier_id``). ``inputs``: a string, ``{"text"}``/``{"image"}`` dicts, TextDoc/ImageDoc, or a list of
        them. ``abstain`` (ours): ``{"false_alarm_rate": 0.05}`` or ``{"threshold": 2.5}`` (a float means the rate).
        ``multi_label`` (ours): ``True`` or a threshold; each result's ``predicted_labels`` then lists every label
        that applies."""
        return self._run(self._classify_call(inputs, labels, model, classifier_id, abstain, multi_label))

    def train(
        self, examples: Iterable[Any], model: str | None = None, classifier_id: str | None = None, access: str = "private",
        num_iters: int = 10, labels: Sequence[str] | None = None, idempotency_key: str | None = None,
        learn_from_inputs: bool | None = None,
    ) -> TrainingResponse:
        """Create a classifier (no ``classifier_id``) or update one. ``examples``: ``(text, label)`` pairs,
        ``{"text"|"image", "label"}`` dicts or TrainingItems. ``labels`` (ours): classes to declare with or without
        examples. ``learn_from_inputs`` (ours): learn from the inputs you classify with it (True), stop (False).
        An ``Idempotency-Key`` (``idempotency_key``, else a new UUID) is sent, the same on every retry."""
        return self._run(self._train_call(examples, model, classifier_id, access, num_iters, labels, idempotency_key,
                                          learn_from_inputs))

    def list(self) -> list[ClassifierSummary]:
        """The caller's classifiers (``GET /v1/classifiers``)."""
        return self._run(self._list_call())

    def delete(self, classifier_id: str) -> DeleteResponse:
        """Delete a classifier (``DELETE /v1/classifiers/{id}``); an unknown id raises ApiError RESOURCE_NOT_FOUND."""
        return self._run(self._delete_call(classifier_id))

    def models(self) -> dict:
        """``GET /v1/models``: ``{"object": "list", "data": [model cards]}`` as the service sends it."""
        return self._run(self._models_call())

    def usage(self) -> UsageReport:
        """``GET /v1/usage`` (this service only): what the caller's key has been charged, per mode, and its balance."""
        return self._run(self._usage_call())

    def embeddings(
        self, inputs: Any, model: str, *, task: str | None = None, dimensions: int | None = None,
        embedding_type: str | builtins.list[str] | None = None, normalized: bool | None = None, truncate: bool | None = None,
        **extra: Any,
    ) -> EmbeddingsResponse:
        """``POST /v1/embeddings`` in Jina's format; options left None are not sent (the service's defaults apply)."""
        options = dict(task=task, dimensions=dimensions, embedding_type=embedding_type, normalized=normalized,
                       truncate=truncate, **extra)
        return self._run(self._embeddings_call(inputs, model, options))


class AsyncClient(_Base):
    """Asynchronous client: the same constructor (``http_client``: an ``httpx.AsyncClient``) and methods as
    :class:`Client`, as coroutines. Use ``async with AsyncClient() as c:`` or ``await c.aclose()``. Safe to
    share between tasks (``last_response`` is then just the latest of them)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 http_client: httpx.AsyncClient | None = None, **kwargs: Any):
        super().__init__(base_url, api_key, **kwargs)
        self._own = http_client is None
        self._http = http_client or httpx.AsyncClient(timeout=self.timeout)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._own:
            await self._http.aclose()

    async def _run(self, call: _Call) -> Any:
        retrying = AsyncRetrying(**self._retry_policy(call).tenacity_args())
        try:
            response: httpx.Response = await retrying(
                self._http.request, call.method, self._url(call.path), json=call.json,
                headers={**self._headers, **call.headers},
            )
        except httpx.TransportError as exc:
            raise self._connection_error(call, exc) from exc
        return self._result(call, response)

    async def request(self, method: str, path: str, json: Any = None) -> Any:
        """Any route, raw: the decoded JSON body; errors as :class:`ApiError`."""
        return await self._run(_Call(method.upper(), path, json, resend_safe=method.upper() == "GET"))

    async def classify(
        self, inputs: Any, labels: Any = None, model: str | None = None, classifier_id: str | None = None,
        abstain: Any = None, multi_label: Any = None,
    ) -> ClassificationResponse:
        """See :meth:`Client.classify`."""
        return await self._run(self._classify_call(inputs, labels, model, classifier_id, abstain, multi_label))

    async def train(
        self, examples: Iterable[Any], model: str | None = None, classifier_id: str | None = None, access: str = "private",
        num_iters: int = 10, labels: Sequence[str] | None = None, idempotency_key: str | None = None,
        learn_from_inputs: bool | None = None,
    ) -> TrainingResponse:
        """See :meth:`Client.train`."""
        return await self._run(self._train_call(examples, model, classifier_id, access, num_iters, labels, idempotency_key,
                                                learn_from_inputs))

    async def list(self) -> list[ClassifierSummary]:
        """See :meth:`Client.list`."""
        return await self._run(self._list_call())

    async def delete(self, classifier_id: str) -> DeleteResponse:
        """See :meth:`Client.delete`."""
        return await self._run(self._delete_call(classifier_id))

    async def usage(self) -> UsageReport:
        return await self._run(self._usage_call())

    async def models(self) -> dict:
        """See :meth:`Client.models`."""
        return await self._run(self._models_call())

    async def embeddings(
        self, inputs: Any, model: str, *, task: str | None = None, dimensions: int | None = None,
        embedding_type: str | builtins.list[str] | None = None, normalized: bool | None = None, truncate: bool | None = None,
        **extra: Any,
    ) -> EmbeddingsResponse:
        """See :meth:`Client.embeddings`."""
        options = dict(task=task, dimensions=dimensions, embedding_type=embedding_type, normalized=normalized,
                       truncate=truncate, **extra)
        return await self._run(self._embeddings_call(inputs, model, options))
