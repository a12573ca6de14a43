"""The Python client and the ``classify`` CLI of the classification service (Jina's Classifier API plus ours).

A package of its own, beside the server's (``serve_app/`` keeps the service), so a client install carries no server
module and no import here can pull in Ray, torch or numpy; ``./scripts/test`` installs it alone in a fresh virtual
environment and runs its tests there. Modules, one job each: ``bodies`` (request bodies), ``responses`` (parsing,
tolerant of Jina's hosted answers), ``errors``, ``retry`` (the one retry policy), ``base`` (what both clients share),
``sync_client`` / ``async_client``, and the CLI (``cli``, ``tables``; ``python -m classifier_client``).

**The wire models.** Requests and answers are the pydantic models the service builds its answers from
(``classifiers/protocol/``: ``wire.py``, ``info.py``, ``errors.py``), which import only pydantic. The client's
distribution (``packaging/classifier-client/pyproject.toml``, ``pip install ./packaging/classifier-client``) ships
that one sub-package beside this one, under its own name, rather than a copy or a new package both import: one
definition, so client and service cannot drift apart, and moving it would touch every module of the core for no
gain. A layout test keeps ``classifiers/protocol`` free of any import but pydantic and the standard library.

``Client`` (sync) and ``AsyncClient`` (async) wrap httpx and return the typed pydantic models of
``classifiers/protocol/`` (``wire.py``, ``info.py``), the same ones the service builds its responses from::

    from classifier_client import ApiError, Client

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
(``num_samples`` in a listing, ``usage`` on train, ``classifier_id`` on delete, ``served_by`` and the other fields
of ours in a model card) still parse.

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
Both clients run this one policy (``retry.py``: :class:`RetryPolicy`, on tenacity's ``Retrying`` / ``AsyncRetrying``).
"""
from classifier_client.async_client import AsyncClient
from classifier_client.base import DEFAULT_BASE_URL, ENV_API_KEY, ENV_URL
from classifier_client.bodies import classify_body, embeddings_body, train_body
from classifier_client.errors import ApiConnectionError, ApiError
from classifier_client.retry import RETRY_STATUSES, parse_retry_after, retry_wait
from classifier_client.sync_client import Client

__all__ = [
    "ApiError", "ApiConnectionError", "AsyncClient", "Client", "DEFAULT_BASE_URL", "ENV_API_KEY", "ENV_URL",
    "RETRY_STATUSES", "classify_body", "embeddings_body", "parse_retry_after", "retry_wait", "train_body",
]
