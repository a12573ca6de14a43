"""The synchronous client, :class:`Client`: the shared calls (``base.py``) sent with ``httpx.Client``."""
from __future__ import annotations

import builtins  # for annotations in a class whose `list` method shadows the builtin
from typing import Any, Iterable, Sequence

import httpx
from tenacity import Retrying

from classifier_client.base import Call, ClientBase
from classifiers.protocol.info import ModelList
from classifiers.protocol.wire import (
    ClassificationResponse,
    ClassifierSummary,
    DeleteResponse,
    EmbeddingsResponse,
    TrainingResponse,
    UsageReport,
)


class Client(ClientBase):
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

    def _run(self, call: Call) -> Any:
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
        return self._run(Call(method.upper(), path, json, resend_safe=method.upper() == "GET"))

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

    def models(self) -> ModelList:
        """``GET /v1/models``: every served name with its card (our fields None where Jina's API lacks them)."""
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
