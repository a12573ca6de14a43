"""Application builders: ``build_app(args)`` for `serve run` / `serve deploy`, ``bind_app(AppConfig)`` from Python."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from pydantic import BaseModel
from ray.serve import Application
from ray.serve.deployment import Deployment

from classifiers.catalog.registry import ModelSpec, Registry
from classifiers.protocol.info import ModelCard, ModelPricing, ServedBy
from deployments.config import DeploymentConfig
from deployments.image_embedder import ImageEmbedder
from deployments.text_embedder import TextEmbedder
from serve_app.config import AppConfig, load_config
from serve_app.ingress import Ingress


def build_app(args: dict) -> Application:
    """The builder `serve run serve_app/serve_config.yaml` and `serve deploy` call with the config's `args`."""
    return bind_app(load_config(args))


def model_card(name: str, spec: ModelSpec, context_length: int) -> ModelCard:
    """Jina's ModelInfo for one API name (aliases included), plus `alias_of`, `served_by`, `score_scale`."""
    return ModelCard(
        id=name,
        name=name,
        alias_of=spec.name if spec.name != name else None,
        hugging_face_id=spec.source if not spec.source.startswith("package:") else "",
        served_by=ServedBy(backend=spec.backend, source=spec.source, window_tokens=spec.max_tokens),
        description=spec.description,
        input_modalities=sorted(spec.modalities),
        output_modalities=["embeddings"],
        context_length=context_length,
        max_output_length=spec.dim,
        score_scale=spec.score_scale,
        multi_label_threshold=spec.multi_label_threshold,
        quantization=spec.engine.quantization,
        created=0,
        pricing=ModelPricing(),
        supported_features=["zero-shot", "few-shot", "embeddings"],
        matryoshka=spec.matryoshka,
        supported_sampling_parameters=[],
        datacenters=[],
    )


def model_cards(registry: Registry, context_length: int) -> dict[str, ModelCard]:
    names = registry.names() + sorted(registry.aliases())
    return {name: model_card(name, registry.get(name), context_length) for name in names}


# The packages whose code runs inside an embedder replica: a change to any of them is a new embedder version.
_EMBEDDER_CODE = [Path(__file__).resolve().parents[1] / pkg for pkg in ("classifiers", "deployments")]


def code_fingerprint(roots: list[Path] = _EMBEDDER_CODE) -> str:
    """A digest of the source files under ``roots`` (paths and contents), so new code is a new version."""
    digest = hashlib.sha256()
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def embedder_version(kind: str, *init_args: BaseModel, code: str) -> str:
    """The version of one embedder deployment: its class, the typed configs its constructor gets, and its code.

    Ray Serve's ``serve.run`` gives every deployment it is not told a version of a new random one, so any
    update of the app (an ingress-only setting, say) replaced every model replica. Options Serve applies
    itself (replicas, autoscaling, resources, queue bounds) are left out: Serve compares those on its own,
    changing them in place or restarting replicas only when it must (e.g. new ``ray_actor_options``)."""
    serve_applied = set(DeploymentConfig.model_fields)
    parts = [kind, code] + [
        json.dumps(a.model_dump(mode="json", exclude=serve_applied if isinstance(a, DeploymentConfig) else None),
                   sort_keys=True)
        for a in init_args
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _versioned(deployment: Deployment, version: str) -> Deployment:
    # Serve keeps ``version`` for its own callers only (``_internal``); it is what tells Serve that an unchanged
    # embedder needs no new replicas.
    return deployment.options(version=version, _internal=True)


def bind_app(cfg: AppConfig, *, generation: int | None = None) -> Application:
    """Bind the ingress to one embedder deployment per served model, each configured on its own.

    Text models get a TextEmbedder-<model>; multimodal models an ImageEmbedder-<model>, which embeds both
    their texts and their images so the two share one space. Each embedder's version comes from its own
    config and code (:func:`embedder_version`), so an update leaves unchanged model replicas running; the
    ingress gets a new version on every deploy (it carries the deploy's ``generation``). ``generation`` orders deploys over one store
    (default: now): the newest deploy's shard set owns the few-shot state."""
    registry = cfg.registry()
    code = code_fingerprint()
    embedders = {}
    # `.options` below: mypy keeps a class's type under a class decorator (python/mypy#3135); these are Deployments.
    for name in cfg.models:
        spec, ecfg = registry.get(name), cfg.embedder_config(name)
        if "image" in spec.modalities:
            image = ImageEmbedder.options(name=f"ImageEmbedder-{name}", **ecfg.serve_options())  # type: ignore[attr-defined]
            embedders[name] = _versioned(image, embedder_version("image", spec, ecfg, cfg.images, code=code)).bind(
                spec, ecfg, cfg.images
            )
        else:
            text = TextEmbedder.options(name=f"TextEmbedder-{name}", **ecfg.serve_options())  # type: ignore[attr-defined]
            embedders[name] = _versioned(text, embedder_version("text", spec, ecfg, code=code)).bind(spec, ecfg)
    cards = model_cards(registry, cfg.limits.max_input_tokens)
    return Ingress.options(**cfg.ingress.serve_options()).bind(  # type: ignore[attr-defined]
        embedders, registry=registry, limits=cfg.limits, ingress=cfg.ingress, state=cfg.state, accounts=cfg.accounts,
        model_cards=cards, generation=time.time_ns() if generation is None else generation,
    )
