"""Application builder: ``build_app(args) -> Application``, usable from Python, `serve run` and `serve deploy`."""
from __future__ import annotations

from ray.serve import Application

from deployments.classifier_router import ClassifierRouter
from deployments.text_embedder import TextEmbedder
from serve_app.config import AppConfig, load_config


def embedder_deployment_name(model: str) -> str:
    return f"TextEmbedder-{model}"


def build_app(args: dict | None = None, *, config: AppConfig | None = None) -> Application:
    """Bind the router to one TextEmbedder deployment per served model, each configured on its own."""
    cfg = config or load_config(args)
    registry = cfg.registry()
    embedders = {}
    for name in cfg.models:
        ecfg = cfg.embedder_config(name)
        embedders[name] = TextEmbedder.options(name=embedder_deployment_name(name), **ecfg.serve_options()).bind(
            registry.get(name).model_dump(), ecfg.model_dump()
        )
    return ClassifierRouter.options(**cfg.router.serve_options()).bind(embedders, cfg.model_dump(mode="json"))
