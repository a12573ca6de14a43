"""CLIP-style models: one encoder for both towers, so text and image vectors live in one space.

Three backends (``ModelSpec.backend``):

* ``clip`` -- :class:`CLIPEncoder`, transformers ``CLIPModel`` (openai/clip-*, laion CLIP checkpoints in HF
  format, any local directory saved with ``save_pretrained``). Text: the tokenizer's ids, pooled by the model
  at the end-of-text token and projected (``get_text_features``). The text window is ``min(spec.max_tokens,
  max_position_embeddings)`` (77 for CLIP); a longer text is split into windows of ``window - 2`` content
  tokens, each window is embedded on its own, and the L2-normalised window vectors are averaged weighted by
  their token counts, then normalised again (chunk pooling, as every engine here does; nothing is silently
  cut off). Text windows run length-sorted in sub-batches of at most ``batch_size`` rows and
  ``max_batch_tokens`` padded tokens (``base.plan_batches``). Images: the slow, PIL-only image processor (never
  the torchvision "fast" one), processed and embedded in sub-batches.
* ``jina_clip`` -- :class:`JinaCLIPEncoder`, jina-clip-v1/v2 through their own Hub code
  (``trust_remote_code``) and its ``encode_text`` / ``encode_image``. Texts beyond the window (8192) are
  truncated by that code; the ingress's token limit is not larger than the window by default. That code batches
  by ``batch_size`` only (``max_batch_tokens`` does not apply).
* ``open_clip`` -- :class:`OpenCLIPEncoder`, the optional ``open_clip_torch`` package (needs torchvision; see
  docs/images.md). Source ``hf-hub:<repo id>``, ``<architecture>:<pretrained tag or checkpoint file>``, or a
  local directory (``local-dir:``). Texts are truncated at the context length by open_clip's tokenizer, which
  pads every text to it: a text sub-batch is at most ``max_batch_tokens // context length`` texts.

All vectors are float32 and L2-normalised. ``count_tokens`` reports the tokens the text has (prefix and
special tokens included; one BOS/EOS pair per window for ``clip``).
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines.base import (
    Encoder,
    Role,
    TextEncoder,
    Tokens,
    TorchThreads,
    default_max_batch_tokens,
    l2_normalize,
    plan_batches,
    pool_windows,
    torch_dtype,
)
from classifiers.embedding.engines.hf_engine import engine_tokenizer
from classifiers.embedding.engines.tokenizer import (
    WindowedTokenizer,
    fast_tokenizer_parts,
    local_model_dir,
    read_json,
    split_windows,
)

CLIP_TEXT_POSITIONS = 77  # transformers' CLIPTextConfig default max_position_embeddings


def load_counter(spec: ModelSpec) -> WindowedTokenizer | None:
    """The ingress's counter for a transformers CLIP model: its ``tokenizer.json`` and ``config.json`` by the
    engine's rules (the text window, special ids dropped from content), no weights. None without the files here."""
    path = local_model_dir(spec)
    parts = fast_tokenizer_parts(path) if path else None
    if path is None or parts is None:
        return None
    positions = read_json(path, "config.json").get("text_config", {}).get("max_position_embeddings", CLIP_TEXT_POSITIONS)
    return WindowedTokenizer(
        spec, parts.encode_batch, parts.head, parts.tail, min(spec.max_tokens, int(positions)), drop=parts.special
    )


def _torch_setup(num_threads: int | None, device: str | None):
    import torch

    if num_threads:
        torch.set_num_threads(int(num_threads))
    return torch, device or ("cuda" if torch.cuda.is_available() else "cpu")


def _features(out):
    """Projected features from ``get_*_features``: a tensor (transformers 4.x) or an output object whose
    ``pooler_output`` holds them (transformers 5.x)."""
    if hasattr(out, "pooler_output") and out.pooler_output is not None:
        return out.pooler_output
    if isinstance(out, (tuple, list)):
        return out[1] if len(out) > 1 else out[0]
    return out


def _rgb(images: list) -> list:
    return [im if getattr(im, "mode", "RGB") == "RGB" else im.convert("RGB") for im in images]


def load_pil_image_processor(path: str):
    """The PIL-backed (slow) image processor of a checkpoint: torchvision is never needed or imported."""
    import transformers
    from transformers import AutoImageProcessor

    major = int(transformers.__version__.split(".")[0])
    if major >= 5:
        return AutoImageProcessor.from_pretrained(path, backend="pil")
    return AutoImageProcessor.from_pretrained(path, use_fast=False)


class CLIPEncoder(TorchThreads, Encoder):
    def __init__(
        self,
        spec: ModelSpec,
        *,
        num_threads: int | None = None,
        device: str | None = None,
        batch_size: int = 32,
        image_batch_size: int = 16,
        dtype: str | None = None,
        max_batch_tokens: int | None = None,
    ):
        from transformers import AutoTokenizer, CLIPModel

        self._torch, self.device = _torch_setup(num_threads, device)
        path = spec.resolve_source()
        self.spec = spec
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = CLIPModel.from_pretrained(path)
        self.model.eval().to(self.device, torch_dtype(self._torch, dtype))
        self.processor = load_pil_image_processor(path)
        self.batch_size = batch_size
        self.image_batch_size = image_batch_size
        self.set_max_batch_tokens(max_batch_tokens or default_max_batch_tokens(self.device))
        self.last_batches: list[tuple[int, int]] = []  # (rows, padded length) per text forward pass, last call
        config: Any = self.model.config  # a CLIPConfig; transformers types its parts loosely (dict | None)
        text_cfg = config.text_config
        self.window = min(spec.max_tokens, int(text_cfg.max_position_embeddings))
        self.tokenizer.model_max_length = 1 << 30  # we window long inputs ourselves
        # A special token inside content would move the pooling: dropped from content.
        self.tokens = engine_tokenizer(spec, self.tokenizer, self.window, drop=frozenset(self.tokenizer.all_special_ids))
        self._head, self._tail = self.tokens.head, self.tokens.tail
        eos = getattr(text_cfg, "eos_token_id", None)
        if eos not in (None, 2) and eos not in self._tail:
            # CLIP pools at the first eos_token_id; a tokenizer that does not end with it would pool garbage.
            raise ValueError(
                f"model {spec.name!r}: the tokenizer ends texts with {self._tail}, but the model pools at "
                f"eos_token_id={eos}; tokenizer and model config do not match"
            )
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self._tail or [0])[-1]
        self.dim = int(config.projection_dim)
        if spec.dim is not None and spec.dim != self.dim:
            raise ValueError(f"model {spec.name!r}: registry says dim={spec.dim}, the checkpoint has {self.dim}")

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        return self.tokens.count_tokens(texts, role)

    def tokenize(self, texts: list[str], role: Role) -> Tokens:
        return self.tokens.tokenize(texts, role)

    def encode_tokens(self, tokens: Tokens) -> np.ndarray:
        if not len(tokens):
            return np.zeros((0, self.dim), np.float32)
        assert tokens.ids is not None  # tokenize() gives ids
        windows, owner = split_windows(tokens.ids, self._head, self._tail, self.window)
        vecs = l2_normalize(self._embed_windows(windows))
        if len(windows) == len(tokens):  # the common case: one window per text
            return vecs
        return pool_windows(vecs, windows, owner, len(tokens))

    def _embed_windows(self, windows: list[list[int]]) -> np.ndarray:
        torch = self._torch
        result = np.zeros((len(windows), self.dim), np.float32)
        self.last_batches = []
        with torch.inference_mode():
            for idx in plan_batches([len(w) for w in windows], self.batch_size, self.max_batch_tokens):
                longest = len(windows[idx[-1]])  # sorted: the last row is the longest
                self.last_batches.append((len(idx), longest))
                ids = torch.full((len(idx), longest), self.pad_id, dtype=torch.long)
                mask = torch.zeros((len(idx), longest), dtype=torch.long)
                for r, i in enumerate(idx):
                    ids[r, : len(windows[i])] = torch.tensor(windows[i])
                    mask[r, : len(windows[i])] = 1
                out = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
                result[idx] = _features(out).float().cpu().numpy()
        return result

    def encode_images(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        torch = self._torch
        images = _rgb(images)
        out = np.zeros((len(images), self.dim), np.float32)
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode():
            for s in range(0, len(images), self.image_batch_size):
                batch = images[s : s + self.image_batch_size]
                pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
                feats = self.model.get_image_features(pixel_values=pixels.to(self.device, dtype))
                out[s : s + len(batch)] = _features(feats).float().cpu().numpy()
        return l2_normalize(out)


class JinaCLIPEncoder(TorchThreads, TextEncoder):
    """jina-clip-v1 / v2 through their Hub code (``encode_text`` / ``encode_image``)."""

    def __init__(
        self, spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, batch_size: int = 16
    ):
        from transformers import AutoModel, AutoTokenizer

        self._torch, self.device = _torch_setup(num_threads, device)
        path = spec.resolve_source()
        self.spec = spec
        self.model = AutoModel.from_pretrained(path, trust_remote_code=spec.trust_remote_code)
        self.model.eval().to(self.device)
        get_tok = getattr(self.model, "get_tokenizer", None)
        self.tokenizer = get_tok() if callable(get_tok) else AutoTokenizer.from_pretrained(
            path, trust_remote_code=spec.trust_remote_code
        )
        self.batch_size = batch_size
        self.window = spec.max_tokens
        self.dim = int(spec.dim or getattr(self.model.config, "projection_dim", 0) or self._probe_dim())

    def _probe_dim(self) -> int:
        return int(self.encode(["a"], "input").shape[1])

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        pfx = self.prefix(role)
        enc = self.tokenizer([pfx + t for t in texts], add_special_tokens=True, truncation=False)
        return [len(ids) for ids in enc["input_ids"]]

    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 0)), np.float32)
        pfx = self.prefix(role)
        kwargs: dict[str, Any] = {"batch_size": self.batch_size, "convert_to_numpy": True, "normalize_embeddings": True}
        if self.spec.task:
            kwargs["task"] = self.spec.task  # jina-clip-v2 only (e.g. "retrieval.query")
        kwargs["max_length"] = self.window  # a tokenizer argument: the code's own default is shorter (512)
        vecs = self.model.encode_text([pfx + t for t in texts], **kwargs)
        return l2_normalize(np.asarray(vecs, dtype=np.float32))

    def encode_images(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        vecs = self.model.encode_image(
            _rgb(images), batch_size=self.batch_size, convert_to_numpy=True, normalize_embeddings=True
        )
        return l2_normalize(np.asarray(vecs, dtype=np.float32))


OPEN_CLIP_MISSING = (
    "backend 'open_clip' needs the optional packages open_clip_torch and torchvision, which are not installed. "
    "Install them in a separate environment with a matching torch/torchvision pair (see docs/images.md), or "
    "serve the model with backend 'clip' from a transformers checkpoint."
)


def open_clip_name(source: str) -> tuple[str, str | None]:
    """``(model_name, pretrained)`` for ``open_clip.create_model_and_transforms`` from a registry source."""
    local = os.path.expanduser(source)
    if os.path.isdir(local):
        return f"local-dir:{local}", None
    if source.startswith(("hf-hub:", "local-dir:")):
        return source, None
    arch, sep, pretrained = source.partition(":")
    if not sep or not arch or not pretrained:
        raise ValueError(
            f"open_clip source {source!r} must be 'hf-hub:<repo id>', '<architecture>:<pretrained tag or file>' "
            "or a local directory"
        )
    return arch, os.path.expanduser(pretrained)


class OpenCLIPEncoder(TorchThreads, TextEncoder):
    """open_clip models (optional dependency)."""

    def __init__(
        self, spec: ModelSpec, *, num_threads: int | None = None, device: str | None = None, batch_size: int = 32
    ):
        try:
            import open_clip
        except ImportError as e:
            raise ImportError(OPEN_CLIP_MISSING) from e
        self._torch, self.device = _torch_setup(num_threads, device)
        self.spec = spec
        name, pretrained = open_clip_name(spec.source)
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=self.device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(name)
        self.batch_size = batch_size
        self.set_max_batch_tokens(default_max_batch_tokens(self.device))
        self.dim = int(spec.dim or self._run_text(["a"]).shape[1])

    def count_tokens(self, texts: list[str], role: Role) -> list[int]:
        pfx = self.prefix(role)
        inner = getattr(self.tokenizer, "tokenizer", None)  # open_clip.tokenizer.HFTokenizer wraps an HF tokenizer
        if inner is not None and callable(inner):
            return [len(inner(pfx + t)["input_ids"]) for t in texts]
        return [len(self.tokenizer.encode(pfx + t)) + 2 for t in texts]  # SimpleTokenizer: + start/end of text

    def _run_text(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        out = []
        context = int(getattr(self.tokenizer, "context_length", 0) or 77)  # every text is padded to it
        rows = max(1, min(self.batch_size, self.max_batch_tokens // context))
        with torch.inference_mode():
            for s in range(0, len(texts), rows):
                tokens = self.tokenizer(texts[s : s + rows]).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out)

    def encode(self, texts: list[str], role: Role) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        pfx = self.prefix(role)
        return l2_normalize(self._run_text([pfx + t for t in texts]))

    def encode_images(self, images: list) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        torch = self._torch
        images = _rgb(images)
        out = []
        with torch.inference_mode():
            for s in range(0, len(images), self.batch_size):
                pixels = torch.stack([self.preprocess(im) for im in images[s : s + self.batch_size]])
                out.append(self.model.encode_image(pixels.to(self.device)).float().cpu().numpy())
        return l2_normalize(np.concatenate(out))
