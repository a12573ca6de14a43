"""Tokenizers outside the model: the rules the ``hf`` and ``clip`` engines tokenise and window texts by, loadable on
their own (from a model's ``tokenizer.json`` through ``tokenizers``: no transformers, no weights), so the ingress
counts, and tokenises, exactly what the engine embeds."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Role, Tokens


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

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        """Content ids and windowed counts in one pass (the tokens an engine's forward pass takes)."""
        ids = self.content_ids(texts, role)
        return Tokens(role, windowed_token_counts([len(x) for x in ids], self.window, self.specials), ids=ids)

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
    :func:`backend_parts`. None when the directory has no ``tokenizer.json``."""
    file = os.path.join(path, "tokenizer.json")
    if not os.path.isfile(file):
        return None
    from tokenizers import Tokenizer

    return backend_parts(Tokenizer.from_file(file))


def backend_parts(backend) -> FastTokenizerParts:
    """From a ``tokenizers.Tokenizer`` (a ``tokenizer.json``, or the backend of a transformers fast tokenizer): its
    batch encoder of content ids, their lengths, the specials it wraps content in (head, tail), and its special ids.
    Truncation and padding are turned off on it (the engines window long texts themselves)."""
    backend.no_truncation()
    backend.no_padding()

    def encodings(texts: list[str]) -> list:
        # one text: `encode`, a third cheaper than a batch of one (a one-input request is the common case)
        if len(texts) == 1:
            return [backend.encode(texts[0], add_special_tokens=False)]
        return backend.encode_batch(texts, add_special_tokens=False)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in encodings(texts)]

    def length_batch(texts: list[str]) -> list[int]:
        return [len(e) for e in encodings(texts)]

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


