"""The asynchronous client, :class:`AsyncClient`: the shared calls (``base.py``) sent with ``httpx.AsyncClient``."""
from __future__ import annotations

import builtins  # for annotations in a class whose `list` method shadows the builtin
from typing import Any, Iterable, Sequence

import httpx
from tenacity import AsyncRetrying

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


class AsyncClient(ClientBase):
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

    async def _run(self, call: Call) -> Any:
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
        return await self._run(Call(method.upper(), path, json, resend_safe=method.upper() == "GET"))

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
        """See :meth:`Client.usage`."""
        return await self._run(self._usage_call())

    async def models(self) -> ModelList:
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
