"""BERT-family sentence embedders (MiniLM, BGE-small, ...) in functional torch, without transformers.

The same model an ``hf`` engine would load (a ``BertModel`` checkpoint: ``config.json`` + ``model.safetensors`` +
``tokenizer.json``), run by :mod:`classifiers.embedding.engines.bert`: the weights read with ``safetensors``, the
tokenizer by ``tokenizers`` under the ``hf`` engine's rules (``WindowedTokenizer``: the role's prefix, windows of the
model's length each wrapped in [CLS]/[SEP], chunk pooling weighted by tokens), so the ingress's counter
(``hf_engine.load_counter``) sends the very ids this engine embeds. Why: transformers' import and model classes
cost ~2.5 s of a replica's start (most of the MiniLM replica's cold start), and its modules' per-call machinery a
good part of a small model's forward pass. Absolute positions and token type 0 only (``position_embedding_type``
other than ``absolute`` is refused at load: use ``hf``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import (
    Encoder,
    Role,
    Tokens,
    TorchThreads,
    default_max_batch_tokens,
    plan_batches,
    pool_windows,
    torch_dtype,
)
from classifiers.embedding.engines.bert import BertLayer, padded, pool, run_layers
from classifiers.embedding.engines.hf_engine import hf_window
from classifiers.embedding.engines.tokenizer import WindowedTokenizer, fast_tokenizer_parts, read_json, split_windows


class TorchBertEncoder(TorchThreads, Encoder):
    def __init__(
        self, spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, dtype: str | None = None,
        batch_size: int = 128, max_batch_tokens: int | None = None,
    ):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        self.spec = spec
        path = spec.resolve_source()
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cfg = read_json(path, "config.json")
        if cfg.get("position_embedding_type", "absolute") != "absolute" or cfg.get("model_type", "bert") != "bert":
            raise ValueError(f"model {spec.name!r}: torch_bert runs BERT with absolute positions; use backend hf")
        parts = fast_tokenizer_parts(path)
        if parts is None:
            raise ValueError(f"model {spec.name!r}: torch_bert needs the model's tokenizer.json in {path}")
        window = min(hf_window(spec, read_json(path, "tokenizer_config.json").get("model_max_length")),
                     int(cfg["max_position_embeddings"]))
        self.window = window
        self.tokens = WindowedTokenizer(spec, parts.encode_batch, parts.head, parts.tail, window,
                                        length_batch=parts.length_batch)
        self.pad = int(cfg.get("pad_token_id") or 0)
        self.batch_size = batch_size
        self.last_batches: list[tuple[int, int]] = []  # (rows, padded length) of each forward pass of the last call
        self.set_max_batch_tokens(max_batch_tokens or default_max_batch_tokens(self.device))
        self._net = _BertNet(torch, path, cfg, self.device, torch_dtype(torch, dtype) or torch.float32)
        self.dim = self._net.H if spec.dim is None else int(spec.dim)
        if self.dim != self._net.H:
            raise ValueError(f"model {spec.name!r}: registry says dim={spec.dim}, the checkpoint has {self._net.H}")

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        return self.tokens.count_tokens(texts, role)

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        return self.tokens.tokenize(texts, role)

    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        assert tokens.ids is not None  # tokenize() gives ids
        windows, owner = split_windows(tokens.ids, self.tokens.head, self.tokens.tail, self.tokens.window)
        vectors = np.zeros((len(windows), self.dim), np.float32)
        self.last_batches = []
        with self._torch.inference_mode():
            for idx in plan_batches([len(w) for w in windows], self.batch_size, self.max_batch_tokens):
                ids, lengths = padded(windows, np.asarray(idx), self.pad)
                self.last_batches.append((len(idx), ids.shape[1]))
                vectors[idx] = self._net(ids, lengths, self.spec.pooling).cpu().numpy()
        return pool_windows(vectors, windows, owner, len(tokens))  # pooled un-normalised, then normalised


class _BertNet:
    """A BertModel's weights from ``model.safetensors`` (names with or without the ``bert.`` prefix)."""

    def __init__(self, torch: Any, path: str, cfg: dict, device: str, dtype: Any):
        from safetensors.numpy import load_file

        raw = load_file(os.path.join(path, "model.safetensors"))
        w = {k.removeprefix("bert."): v for k, v in raw.items()}
        self.torch, self.device, self.dtype = torch, device, dtype
        self.H, self.heads, self.eps = int(cfg["hidden_size"]), int(cfg["num_attention_heads"]), float(cfg["layer_norm_eps"])
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"torch_bert runs erf GELU; this model uses {cfg.get('hidden_act')!r}: use backend hf")

        def t(name: str, dt: Any = dtype) -> Any:
            return torch.from_numpy(np.array(w[name], dtype=np.float32)).to(device=device, dtype=dt)

        e = "embeddings."
        self.word = t(e + "word_embeddings.weight", torch.float32)
        # position + token type 0, summed once (every text here is one segment)
        self.pos_type = t(e + "position_embeddings.weight", torch.float32) + t(e + "token_type_embeddings.weight", torch.float32)[0]
        self.emb_ln = (t(e + "LayerNorm.weight"), t(e + "LayerNorm.bias"))
        self.layers = [self._layer(t, torch, f"encoder.layer.{i}.") for i in range(int(cfg["num_hidden_layers"]))]

    @staticmethod
    def _layer(t, torch: Any, p: str) -> BertLayer:
        a = p + "attention."
        qkv_w = torch.cat([t(f"{a}self.{n}.weight") for n in ("query", "key", "value")])
        qkv_b = torch.cat([t(f"{a}self.{n}.bias") for n in ("query", "key", "value")])
        return BertLayer(
            qkv_w, qkv_b, t(a + "output.dense.weight"), t(a + "output.dense.bias"),
            (t(a + "output.LayerNorm.weight"), t(a + "output.LayerNorm.bias")),
            t(p + "intermediate.dense.weight"), t(p + "intermediate.dense.bias"),
            t(p + "output.dense.weight"), t(p + "output.dense.bias"),
            (t(p + "output.LayerNorm.weight"), t(p + "output.LayerNorm.bias")),
        )

    def __call__(self, ids_np: np.ndarray, lengths_np: np.ndarray, pooling: str) -> Any:
        """ids [B, L] (padded), lengths [B] -> [B, H] float32, pooled over each row's real tokens."""
        torch, F, H = self.torch, self.torch.nn.functional, self.H
        L = ids_np.shape[1]
        valid_np = np.arange(L)[None, :] < lengths_np[:, None]
        valid = torch.from_numpy(valid_np).to(self.device)
        ids = torch.from_numpy(ids_np).to(self.device)
        x = F.layer_norm((self.word[ids] + self.pos_type[:L]).to(self.dtype), (H,), *self.emb_ln, self.eps)
        x = run_layers(torch, x, self.layers, valid_np, valid, self.heads, self.eps)
        return pool(torch, x, valid, lengths_np, pooling)


def load_counter(spec: ModelSpec):
    """The ingress counts a torch_bert model with its ``tokenizer.json`` by the same rules (``hf_engine``)."""
    from classifiers.embedding.engines.hf_engine import load_counter as hf_counter

    return hf_counter(spec)
