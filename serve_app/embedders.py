"""The ingress side of the embedder deployments: the services' ``Embedder`` over their Serve handles.

Small text requests to one model are coalesced into one handle call (:class:`Coalescer`): a handle call costs the
ingress and the embedder replica more CPU (Serve's router, gRPC, serialisation on both sides) than tokenising and
scoring a one-input request, and under load one call can carry many requests. At most
``IngressConfig.embed_calls_in_flight`` calls per model are in flight from a replica; requests that arrive while
that many are out go together in the next one. Each request still waits its own fair turn in the embedder
(``classifiers.embedding.turns.FairTurns``); large requests (a big request's chunks) are never coalesced, so a small
request never waits for a big one's call to return.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Awaitable, Callable

from ray.serve.handle import DeploymentHandle

from classifiers.embedding.requests import CountRequest, EmbedRequest, EmbedResult, ImageEmbedRequest, ImageEmbedResult
from classifiers.embedding.tokens import TextCount

# What crosses the handle is plain importable dataclasses and numpy arrays (classifiers/embedding/requests.py): the
# standard pickle serialises them as well as Ray Serve's default, cloudpickle, at half the CPU (measured: a one-input
# call's request and result, dumped and loaded, 29 us -> 13 us, on every request). It applies where Serve serialises
# a call itself (its gRPC transport, RAY_SERVE_THROUGHPUT_OPTIMIZED); Ray's own actor calls ignore it.
SERIALIZATION = "pickle"
COALESCE_MAX_TOKENS = 256  # requests of at most this many tokens are coalesced (a one-input request, a few inputs)
COALESCE_MAX_REQUESTS = 64  # per call: about two model calls' worth of one-input requests


@dataclass
class _Lane:
    """One model's calls from this replica: how many are in flight, and the requests waiting for the next."""

    in_flight: int = 0
    pending: list[tuple[EmbedRequest, asyncio.Future]] = field(default_factory=list)


class Coalescer:
    """Send small requests one call at a time while fewer than ``max_in_flight`` calls are out, else together in the
    next call (``call_many``) once one returns. One event loop; the calls' own errors reach every request they
    carried."""

    def __init__(
        self, call_one: Callable[[str, EmbedRequest], Awaitable[EmbedResult]],
        call_many: Callable[[str, list[EmbedRequest]], Awaitable[list[EmbedResult]]], max_in_flight: int,
    ):
        self.call_one, self.call_many = call_one, call_many
        self.max_in_flight = max(1, max_in_flight)
        self._lanes: dict[str, _Lane] = {}
        self.calls = 0
        self.requests = 0

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        lane = self._lanes.setdefault(model, _Lane())
        self.requests += 1
        if lane.in_flight < self.max_in_flight and not lane.pending:
            lane.in_flight += 1
            self.calls += 1
            try:
                return await self.call_one(model, request)
            finally:
                self._returned(model, lane)
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        lane.pending.append((request, fut))
        return await fut

    def _returned(self, model: str, lane: _Lane) -> None:
        lane.in_flight -= 1
        if lane.pending and lane.in_flight < self.max_in_flight:
            batch, lane.pending = lane.pending[:COALESCE_MAX_REQUESTS], lane.pending[COALESCE_MAX_REQUESTS:]
            lane.in_flight += 1
            self.calls += 1
            asyncio.get_running_loop().create_task(self._send(model, lane, batch))

    async def _send(self, model: str, lane: _Lane, batch: list[tuple[EmbedRequest, asyncio.Future]]) -> None:
        live = [(r, f) for r, f in batch if not f.done()]  # a caller that went away needs no answer
        try:
            if live:
                results = await self.call_many(model, [r for r, _ in live])
                for (_, fut), result in zip(live, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
        except BaseException as exc:  # noqa: BLE001 - every request the call carried gets its error
            for _, fut in live:
                if not fut.done():
                    fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._returned(model, lane)


class HandleEmbedder:
    """The services' Embedder over the embedder deployments' handles (one per served model)."""

    def __init__(self, handles: dict[str, DeploymentHandle], *, calls_in_flight: int = 4):
        self.handles = handles
        # One handle per (model, method), made on first use: `handle.embed` is `handle.options(method_name=...)`,
        # a new handle object on every call otherwise.
        self._methods: dict[tuple[str, str], DeploymentHandle] = {}
        self.coalescer = Coalescer(self._embed_one, self._embed_many, calls_in_flight)

    def method(self, model: str, name: str) -> DeploymentHandle:
        handle = self._methods.get((model, name))
        if handle is None:
            handle = self._methods[(model, name)] = self.handles[model].options(
                method_name=name, request_serialization=SERIALIZATION, response_serialization=SERIALIZATION
            )
        return handle

    async def embed(self, model: str, request: EmbedRequest) -> EmbedResult:
        if request.cost > COALESCE_MAX_TOKENS:
            return await self._embed_one(model, request)
        return await self.coalescer.embed(model, request)

    async def _embed_one(self, model: str, request: EmbedRequest) -> EmbedResult:
        return await self.method(model, "embed").remote(request)

    async def _embed_many(self, model: str, requests: list[EmbedRequest]) -> list[EmbedResult]:
        return await self.method(model, "embed_many").remote(requests)

    async def embed_images(self, model: str, request: ImageEmbedRequest) -> ImageEmbedResult:
        return await self.method(model, "embed_images").remote(request)

    async def count(self, model: str, request: CountRequest) -> TextCount:
        return await self.method(model, "count").remote(request)
