"""Application builders: ``build_app(args)`` for `serve run` / `serve deploy`, ``bind_app(AppConfig)`` from Python."""
from __future__ import annotations

from ray.serve import Application

from deployments.classifier_router import ClassifierRouter
from deployments.image_embedder import ImageEmbedder
from deployments.text_embedder import TextEmbedder
from serve_app.config import AppConfig, load_config


def build_app(args: dict) -> Application:
    """The builder `serve run serve_app/serve_config.yaml` and `serve deploy` call with the config's `args`."""
    return bind_app(load_config(args))


def bind_app(cfg: AppConfig) -> Application:
    """Bind the router to one embedder deployment per served model, each configured on its own.

    Text models get a TextEmbedder-<model>; multimodal models an ImageEmbedder-<model>, which embeds both
    their texts and their images so the two share one space."""
    registry = cfg.registry()
    embedders = {}
    for name in cfg.models:
        spec, ecfg = registry.get(name), cfg.embedder_config(name)
        if "image" in spec.modalities:
            embedders[name] = ImageEmbedder.options(name=f"ImageEmbedder-{name}", **ecfg.serve_options()).bind(
                spec.model_dump(), ecfg.model_dump(), cfg.images.model_dump()
            )
        else:
            embedders[name] = TextEmbedder.options(name=f"TextEmbedder-{name}", **ecfg.serve_options()).bind(
                spec.model_dump(), ecfg.model_dump()
            )
    return ClassifierRouter.options(**cfg.router.serve_options()).bind(embedders, cfg.model_dump(mode="json"))
