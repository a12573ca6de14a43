"""/v1/embeddings: the served models as plain embedders, in Jina's wire format. No Ray imports.

The same embedder deployments and the same ``@serve.batch`` batches as classify serve these requests (through
:class:`~classifiers.embedding.vectors.Vectors`), so an embeddings call and a classify call to one model share model
calls. Usage counts input tokens (images by their documented rule), like classify's inputs.
"""
from __future__ import annotations

import base64

import numpy as np

from classifiers.catalog.registry import ModelSpec, Registry
from classifiers.embedding.tokens import TokenBudget
from classifiers.embedding.vectors import Vectors
from classifiers.protocol.errors import InvalidInput
from classifiers.protocol.wire import EmbeddingData, EmbeddingsRequest, EmbeddingsResponse, EmbeddingUsage
from classifiers.request.inputs import check_modalities, parse_inputs
from classifiers.request.limits import Limits


def encode_embedding(vector: np.ndarray, kind: str):
    """One vector in one of Jina's encodings."""
    if kind == "float":
        return vector.astype(np.float32).tolist()
    if kind == "base64":
        return base64.b64encode(vector.astype("<f4").tobytes()).decode("ascii")
    bits = np.packbits(vector > 0)
    return (bits.view(np.int8) if kind == "binary" else bits).astype(int).tolist()


def truncate(vectors: np.ndarray, dimensions: int) -> np.ndarray:
    """Keep the first `dimensions` components and re-normalise (Matryoshka truncation)."""
    out = vectors[:, :dimensions]
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norms, 1e-12)


def check_dimensions(dimensions: int, dim: int, spec: ModelSpec) -> None:
    """``dimensions`` other than the model's own: only below it, and only for Matryoshka models."""
    if dimensions == dim:
        return
    if dimensions > dim:
        raise InvalidInput(f"dimensions={dimensions} is over {spec.name}'s {dim}")
    if not spec.matryoshka:
        raise InvalidInput(
            f"{spec.name} was not trained for truncated embeddings (not Matryoshka): omit `dimensions` or send {dim}"
        )


class EmbeddingsService:
    def __init__(self, *, registry: Registry, limits: Limits, vectors: Vectors):
        self.registry = registry
        self.limits = limits
        self.vectors = vectors

    async def embed(
        self, req: EmbeddingsRequest, *, budget: TokenBudget | None = None, tenant: str = ""
    ) -> EmbeddingsResponse:
        """``budget``: what the caller may spend, admitted on the counted tokens before any model work."""
        spec = self.registry.get(req.model)
        items = parse_inputs(req.input, max_inputs=self.limits.max_inputs, max_tokens=self.limits.max_input_tokens)
        check_modalities(items, spec, self.registry.with_image_support())
        kinds = req.embedding_type if isinstance(req.embedding_type, list) else [req.embedding_type or "float"]
        if not kinds:
            raise InvalidInput("embedding_type is an empty list")
        if req.dimensions is not None and spec.dim is not None:  # a dimension known before loading: checked now
            check_dimensions(req.dimensions, spec.dim, spec)
        counted = await self.vectors.count(spec, items, budget=budget)
        vectors, tokens = await self.vectors.inputs(spec, items, counted, tenant=tenant)
        dim = vectors.shape[1]
        if req.dimensions is not None and req.dimensions != dim:
            check_dimensions(req.dimensions, dim, spec)
            vectors = truncate(vectors, req.dimensions)
        many = isinstance(req.embedding_type, list)
        data = [
            EmbeddingData(
                index=i,
                embedding={k: encode_embedding(v, k) for k in kinds} if many else encode_embedding(v, kinds[0]),
            )
            for i, v in enumerate(vectors)
        ]
        return EmbeddingsResponse(model=req.model, data=data, usage=EmbeddingUsage(total_tokens=tokens, prompt_tokens=tokens))
