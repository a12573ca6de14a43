"""The Ingress's informational routes: the caller's usage, the served models, health and readiness, statistics, and
the playground page. Separate from the operations (``serve_app/operations.py``) because they run no admission and
charge nothing; each takes what it needs from the replica's parts."""
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Awaitable, Callable

from fastapi import Request
from fastapi.responses import HTMLResponse

from classifiers.accounts.keys import Principal
from classifiers.protocol.errors import ServiceUnavailable
from classifiers.protocol.info import (
    EmbedCalls,
    Health,
    IngressStats,
    ModelCard,
    ModelList,
    Readiness,
    ServiceStats,
)
from classifiers.protocol.wire import UsageReport
from deployments.process import memory
from serve_app.composition import IngressParts

PLAYGROUND = Path(__file__).parent / "playground.html"


class ServiceInfo:
    """The informational routes of one Ingress replica (bound as ``info.*`` in ``serve_app.ingress.ROUTES``)."""

    def __init__(self, parts: IngressParts, model_cards: dict[str, ModelCard], principal: Callable[[Request], Awaitable[Principal]]):
        self.parts = parts
        self.model_cards = model_cards
        self.principal = principal  # names an HTTP caller (the Ingress's rule: keys, anonymous, loopback)
        self._playground_html: str | None = None

    async def usage(self, request: Request) -> UsageReport:
        """What the caller's key has been charged (ours): tokens and requests, per mode, and the balance left.

            curl -s http://127.0.0.1:8000/v1/usage -H "Authorization: Bearer $KEY"
        """
        principal = await self.principal(request)
        used = await self.parts.gate.meter.usage(principal.subject, principal.account_id)
        left = None if principal.balance is None else principal.balance - used.tokens
        return UsageReport(key_id=principal.subject, account_id=used.account_id, tokens=used.tokens,
                           requests=used.requests, by_mode=used.by_mode, balance=principal.balance, balance_left=left)

    async def models(self, request: Request) -> ModelList:
        """Models this deployment serves, and what each name (aliases included) really runs.

            curl -s http://127.0.0.1:8000/v1/models
        """
        await self.principal(request)
        return ModelList(data=list(self.model_cards.values()))

    async def model(self, model_id: str, request: Request) -> ModelCard:
        """One model's card, e.g. `curl -s http://127.0.0.1:8000/v1/models/multilingual-e5-small`."""
        await self.principal(request)
        self.parts.registry.get(model_id)  # an unknown name raises INPUT_MODEL_NOT_FOUND, listing the known ones
        return self.model_cards[model_id]

    async def playground(self) -> HTMLResponse:
        """The browser playground (serve_app/playground.html): open like /docs; its API calls need a key as usual."""
        if self._playground_html is None:  # read once per replica
            self._playground_html = PLAYGROUND.read_text(encoding="utf-8")
        return HTMLResponse(self._playground_html)

    async def health(self) -> Health:
        """Liveness of the ingress (same as /live)."""
        return Health()

    async def live(self) -> Health:
        """The ingress process is up."""
        return Health()

    async def ready(self) -> Readiness:
        """200 once every served model is loaded and answering; 503 with the missing ones otherwise."""
        embedders = self.parts.embedders
        results = await asyncio.gather(
            *(asyncio.wait_for(h.ready.remote(), timeout=5) for h in embedders.values()), return_exceptions=True
        )
        missing = [n for n, r in zip(embedders, results, strict=True) if r is not True]
        if missing:
            raise ServiceUnavailable(f"models not ready: {missing}")
        return Readiness(models=list(embedders))

    async def stats(self, request: Request) -> ServiceStats:
        """Batching, cache and rate-limit statistics (per replica answering). Admin keys only when keys are required."""
        p = self.parts
        p.gate.require_admin(await self.principal(request))
        embedders = await asyncio.gather(*(h.stats.remote() for h in p.embedders.values()))
        return ServiceStats(
            embedders=dict(zip(p.embedders, embedders, strict=True)),
            label_cache=p.vectors.label_cache.stats(),
            classifier_shards=await p.repo.stats(),
            rate_limit_refusals=dict(p.gate.limiter.refused),
            shed=dict(p.admission.shed),
            ingress=IngressStats(inflight=p.admission.inflight, **memory()),
            embed_calls=EmbedCalls(**p.embedder_calls()),
            usage_flush_failures=p.gate.meter.failed_flushes,
        )
