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
    TorchThreads,
    default_max_batch_tokens,
    l2_normalize,
    plan_batches,
    pool_windows,
    special_wrapping,
    split_windows,
    torch_dtype,
    windowed_token_counts,
)


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
        self.window = min(spec.max_tokens, int(getattr(self.tokenizer, "model_max_length", spec.max_tokens) or 0) or spec.max_tokens)
        self.tokenizer.model_max_length = 1 << 30  # we window long inputs ourselves; silence the length warning
        self._head, self._tail = special_wrapping(self.tokenizer)
        self._specials = len(self._head) + len(self._tail)
        self.dim = int(self.model.config.hidden_size if spec.dim is None else spec.dim)

    def _content_ids(self, texts: list[str], role: Role) -> list[list[int]]:
        pfx = self.prefix(role)
        enc = self.tokenizer([pfx + t for t in texts], add_special_tokens=False, truncation=False)
        return enc["input_ids"]

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        return windowed_token_counts(self._content_ids(texts, role), self.window, self._specials)

    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        if self.spec.task and hasattr(self.model, "encode"):
            pfx = self.prefix(role)
            vecs = self.model.encode([pfx + t for t in texts], task=self.spec.task, max_length=self.spec.max_tokens)
            return l2_normalize(np.asarray(vecs))
        windows, owner = split_windows(self._content_ids(texts, role), self._head, self._tail, self.window)
        return pool_windows(self._embed_windows(windows), windows, owner, len(texts))  # pooled un-normalised

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
