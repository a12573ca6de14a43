"""The embedding batch step, shared by the embedder deployment and the raw-encoder benchmark.

A batch is a list of requests coalesced by ``@serve.batch``; each request is a list of texts in one role
(input or label). Token limits are checked per request *before* any model call, so one over-long text
fails only its own request and never the others that share the batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from classifiers.engines.base import Encoder, Role


@dataclass
class EmbedRequest:
    texts: list[str]
    role: Role = "input"
    max_tokens: int = 8192


@dataclass
class EmbedResult:
    vectors: np.ndarray | None
    tokens: list[int] = field(default_factory=list)
    too_long: int | None = None  # index of the first text over max_tokens; vectors is None then


def embed_batch(encoder: Encoder, requests: list[EmbedRequest]) -> list[EmbedResult]:
    results: list[EmbedResult | None] = [None] * len(requests)
    accepted: dict[Role, list[int]] = {"input": [], "label": []}
    for i, req in enumerate(requests):
        tokens = encoder.count_tokens(req.texts, req.role)
        over = next((j for j, n in enumerate(tokens) if n > req.max_tokens), None)
        results[i] = EmbedResult(vectors=None, tokens=tokens, too_long=over)
        if over is None:
            accepted[req.role].append(i)
    for role, idx in accepted.items():
        if not idx:
            continue
        texts = [t for i in idx for t in requests[i].texts]
        vectors = encoder.encode(texts, role)
        start = 0
        for i in idx:
            n = len(requests[i].texts)
            results[i].vectors = vectors[start : start + n]
            start += n
    return results  # type: ignore[return-value]


class BatchStats:
    """What batching achieved: how many requests and items (texts or images) each model call carried."""

    def __init__(self, item: str = "texts"):
        self.item = item
        self.batches = 0
        self.requests = 0
        self.items = 0
        self.max_requests_in_batch = 0
        self.histogram: dict[int, int] = {}  # requests per batch -> number of batches

    def record(self, items_per_request: list[int]) -> None:
        n = len(items_per_request)
        self.batches += 1
        self.requests += n
        self.items += sum(items_per_request)
        self.max_requests_in_batch = max(self.max_requests_in_batch, n)
        self.histogram[n] = self.histogram.get(n, 0) + 1

    def snapshot(self) -> dict:
        return {
            "batches": self.batches,
            "requests": self.requests,
            self.item: self.items,
            "max_requests_in_batch": self.max_requests_in_batch,
            "mean_requests_per_batch": self.requests / self.batches if self.batches else 0.0,
            "requests_per_batch_histogram": {str(k): v for k, v in sorted(self.histogram.items())},
        }


# ---- Images (multimodal models): the image side of the same embedding space ----------------------------------


@dataclass
class ImageEmbedRequest:
    """Image inputs of one request: the raw strings (URL / data URI / base64) and their request positions."""

    values: list[str]
    positions: list[int]


@dataclass
class ImageEmbedResult:
    vectors: np.ndarray  # (len(values), dim) float32, rows L2-normalised
    tokens: list[int] = field(default_factory=list)  # per image (classifiers.images.image_tokens)


def embed_image_batch(encoder: Encoder, batch: list[list]) -> list[np.ndarray]:
    """One model pass for several requests' decoded images; returns each request's (n_i, dim) vectors."""
    flat = [im for images in batch for im in images]
    vectors = encoder.encode_images(flat) if flat else np.zeros((0, encoder.dim), np.float32)
    out, start = [], 0
    for images in batch:
        out.append(vectors[start : start + len(images)])
        start += len(images)
    return out
