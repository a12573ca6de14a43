"""Sentence-embedding models through transformers ``AutoModel`` (MiniLM, E5, BGE, jina-embeddings-v3, ...).

Texts are tokenized, sorted by length and run in sub-batches of at most ``batch_size`` windows and at most
``max_batch_tokens`` padded tokens (rows x longest row; ``base.plan_batches``), so that padding is minimal and a
batch of long texts runs as several smaller forward passes. Pooling (mean or CLS) follows the registry. A text
longer than the model window is split into windows of ``max_tokens - specials`` content tokens; each window is
embedded on its own and the windows' pooled vectors are averaged weighted by their token counts before
normalisation (chunk pooling), so long documents are never silently truncated. Models with task adapters
(jina-embeddings-v3) use their own ``encode`` with the registry's ``task``, and its batching (the token budget does
not apply to them).
"""
from __future__ import annotations

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import (
    Encoder,
    Role,
    Tokens,
    TorchThreads,
    default_max_batch_tokens,
    l2_normalize,
    plan_batches,
    pool_windows,
    torch_dtype,
)
from classifiers.embedding.engines.tokenizer import (
    WindowedTokenizer,
    backend_parts,
    fast_tokenizer_parts,
    local_model_dir,
    read_json,
    special_wrapping,
    split_windows,
)


def hf_window(spec: ModelSpec, model_max_length) -> int:
    """Tokens per window: the registry's, capped by the tokenizer's ``model_max_length`` when it states one."""
    return min(spec.max_tokens, int(model_max_length or 0) or spec.max_tokens)


def engine_tokenizer(spec: ModelSpec, tokenizer, window: int, drop: frozenset[int] = frozenset()) -> WindowedTokenizer:
    """The engine's tokenizer rules over a transformers tokenizer: its Rust backend directly when it has one (a
    batch through transformers' ``__call__`` costs several times the tokenising itself), else ``__call__``."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        parts = backend_parts(backend)
        return WindowedTokenizer(spec, parts.encode_batch, parts.head, parts.tail, window, drop=drop,
                                 length_batch=parts.length_batch)

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]

    head, tail = special_wrapping(lambda t, sp: tokenizer(t, add_special_tokens=sp)["input_ids"])
    return WindowedTokenizer(spec, encode_batch, head, tail, window, drop=drop)


def load_counter(spec: ModelSpec) -> WindowedTokenizer | None:
    """The ingress's counter for an hf model: its ``tokenizer.json`` by the engine's rules (no weights, no
    transformers). None for models whose own code embeds (task adapters, remote code) or without the file here."""
    if spec.task or spec.trust_remote_code:
        return None
    path = local_model_dir(spec)
    parts = fast_tokenizer_parts(path) if path else None
    if path is None or parts is None:
        return None
    window = hf_window(spec, read_json(path, "tokenizer_config.json").get("model_max_length"))
    return WindowedTokenizer(spec, parts.encode_batch, parts.head, parts.tail, window, length_batch=parts.length_batch)


class HFEncoder(TorchThreads, Encoder):
    def __init__(
        self, spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, batch_size: int = 128,
        dtype: str | None = None, max_batch_tokens: int | None = None,
    ):
        import torch
        from transformers import AutoModel, AutoTokenizer

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        path = spec.resolve_source()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
        self.model = AutoModel.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
        self.model.eval().to(self.device, torch_dtype(torch, dtype))  # float16 on GPUs: half the memory, faster
        self.spec = spec
        self.batch_size = batch_size
        self.set_max_batch_tokens(max_batch_tokens or default_max_batch_tokens(self.device))
        self.last_batches: list[tuple[int, int]] = []  # (rows, padded length) of each forward pass of the last call
        self.window = hf_window(spec, getattr(self.tokenizer, "model_max_length", None))
        self.tokenizer.model_max_length = 1 << 30  # we window long inputs ourselves; silence the length warning
        self.tokens = engine_tokenizer(spec, self.tokenizer, self.window)
        self.takes_ids = not (spec.task and hasattr(self.model, "encode"))  # task adapters: the model's own encode
        self._head, self._tail = self.tokens.head, self.tokens.tail
        self.dim = int(self.model.config.hidden_size if spec.dim is None else spec.dim)

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        return self.tokens.count_tokens(texts, role)

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        if not self.takes_ids:  # the model's own code tokenises
            return Tokens(role, self.count_tokens(texts, role), texts=list(texts))
        return self.tokens.tokenize(texts, role)

    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        if tokens.ids is None:  # task adapters: the model's own encode, from the texts
            assert tokens.texts is not None
            pfx = self.prefix(tokens.role)
            vecs = self.model.encode([pfx + t for t in tokens.texts], task=self.spec.task, max_length=self.spec.max_tokens)
            return l2_normalize(np.asarray(vecs))
        windows, owner = split_windows(tokens.ids, self._head, self._tail, self.window)
        return pool_windows(self._embed_windows(windows), windows, owner, len(tokens))  # pooled un-normalised

    def _embed_windows(self, windows: list[list[int]]) -> np.ndarray:
        torch = self._torch
        result = np.zeros((len(windows), self.dim), np.float32)
        pad = self.tokenizer.pad_token_id or 0
        self.last_batches = []
        with torch.inference_mode():
            for idx in plan_batches([len(w) for w in windows], self.batch_size, self.max_batch_tokens):
                longest = len(windows[idx[-1]])  # sorted: the last row is the longest
                self.last_batches.append((len(idx), longest))
                ids = torch.full((len(idx), longest), pad, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(windows[i])] = torch.tensor(windows[i])
                    mask[r, : len(windows[i])] = 1
                ids, mask = ids.to(self.device), mask.to(self.device)
                hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
                if self.spec.pooling == "cls":
                    vec = hidden[:, 0]
                else:
                    m = mask.unsqueeze(-1).to(hidden.dtype)
                    vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
                result[idx] = vec.float().cpu().numpy()
        return result
