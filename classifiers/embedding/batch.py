"""The embedding batch step, shared by the embedder deployments and the in-process embedder.

A request's texts are tokenised (or taken as the ingress sent them) outside the model lock, and a text over its
limit fails only its own request (:func:`tokenize_request`); then one forward pass per role embeds every request of
a batch coalesced by ``@serve.batch`` (:func:`embed_batch`), under the lock. Counting for an ingress without the
model's tokenizer (:func:`count_in_slices`) and the image side (:func:`embed_image_batch`) are here too.
"""
from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass

import numpy as np

from classifiers.embedding.engines.base import Encoder, Tokens, join_tokens
from classifiers.embedding.requests import CountRequest, EmbedRequest, EmbedResult
from classifiers.embedding.tokens import TextCount, count_slice, slice_spans


@dataclass
class Tokenized:
    """One request of a batch with its tokens, made before it waits for the model."""

    request: EmbedRequest
    tokens: Tokens


def tokenize_request(encoder: Encoder, request: EmbedRequest) -> tuple[Tokens, int | None]:
    """The request's tokens (the ingress's ids or counts when it sent them, else the engine's own), and the index of
    the first text over ``request.max_tokens`` (None when every text fits). No model state is touched: it runs
    outside the model lock, while another batch's forward pass runs."""
    if request.ids is not None and request.counts is not None:
        tokens = Tokens(request.role, list(request.counts), ids=request.ids)
    elif request.counts is not None and not encoder.takes_ids:
        tokens = Tokens(request.role, list(request.counts), texts=request.texts)
    else:
        tokens = encoder.tokenize(request.texts, request.role)
    over = next((j for j, n in enumerate(tokens.counts) if n > request.max_tokens), None)
    return tokens, over


def embed_batch(encoder: Encoder, batch: list[Tokenized]) -> list[np.ndarray]:
    """One forward pass per role for the requests of a batch; each request's (n_i, dim) vectors, in order."""
    out: list[np.ndarray | None] = [None] * len(batch)
    for role in ("input", "label"):
        idx = [i for i, b in enumerate(batch) if b.request.role == role]
        if not idx:
            continue
        vectors = encoder.encode_tokens(join_tokens([batch[i].tokens for i in idx]))
        start = 0
        for i in idx:
            n = len(batch[i].tokens)
            out[i] = vectors[start : start + n]
            start += n
    return [v if v is not None else np.zeros((0, encoder.dim), np.float32) for v in out]


def embed_now(encoder: Encoder, request: EmbedRequest) -> EmbedResult:
    """One request, tokenised and embedded at once (the in-process embedder and tools)."""
    tokens, over = tokenize_request(encoder, request)
    if over is not None:
        return EmbedResult(vectors=None, tokens=tokens.counts, too_long=over)
    (vectors,) = embed_batch(encoder, [Tokenized(request, tokens)])
    return EmbedResult(vectors=vectors, tokens=tokens.counts)


async def count_in_slices(encoder: Encoder, request: CountRequest, lock: threading.Lock | None = None) -> TextCount:
    """Count with the engine's own tokenizer, slice by slice off the event loop, each slice under ``lock`` (the
    model's: an engine's tokenizer is not safe to share with a model call running meanwhile), so model calls of
    other requests go on between slices."""
    done = TextCount()

    def one(part: list[str]) -> None:
        with lock if lock is not None else contextlib.nullcontext():
            count_slice(lambda t: encoder.count_tokens(t, request.role), part, done, stop_at=request.stop_at,
                        max_tokens=request.max_tokens)

    for lo, hi in slice_spans(request.texts):
        await asyncio.to_thread(one, request.texts[lo:hi])
        if not done.complete:
            break
    return done


def embed_image_batch(encoder: Encoder, batch: list[list]) -> list[np.ndarray]:
    """One model pass for several requests' decoded images; returns each request's (n_i, dim) vectors."""
    flat = [im for images in batch for im in images]
    vectors = encoder.encode_images(flat) if flat else np.zeros((0, encoder.dim), np.float32)
    out, start = [], 0
    for images in batch:
        out.append(vectors[start : start + len(images)])
        start += len(images)
    return out
