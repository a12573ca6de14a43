"""The transformers-free BERT engine against the ``hf`` engine on the same checkpoint (all-MiniLM-L6-v2's bundled
weights): the same tokens and the same vectors up to float rounding, one short text and long ones past the window."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from classifiers.embedding.engines.hf_engine import HFEncoder
from classifiers.embedding.engines.torch_bert_engine import TorchBertEncoder
from tests.classifiers.embedding.engines.test_torch_e5_engine import TEXTS


@pytest.fixture(scope="module")
def pair(encoders):
    spec = encoders["all-MiniLM-L6-v2"].spec
    assert spec.backend == "torch_bert"  # the built-in runs on this engine
    ours = TorchBertEncoder(spec, num_threads=2, device="cpu")
    hf = HFEncoder(spec.model_copy(update={"backend": "hf"}), num_threads=2, device="cpu")
    return ours, hf


def test_tokens_equal_the_hf_engine(pair):
    ours, hf = pair
    for role in ("input", "label"):
        assert ours.count_tokens(TEXTS, role) == hf.count_tokens(TEXTS, role)
        assert [list(i) for i in ours.tokenize(TEXTS, role).ids] == [list(i) for i in hf.tokenize(TEXTS, role).ids]
    assert ours.window == hf.window == 256


def test_vectors_equal_the_hf_engine(pair):
    ours, hf = pair
    a, b = ours.encode(TEXTS, "input"), hf.encode(TEXTS, "input")
    assert a.dtype == np.float32 and a.shape == b.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    cos = np.sum(a * b, axis=1)
    assert cos.min() > 0.99999, {TEXTS[i][:30]: float(cos[i]) for i in np.flatnonzero(cos <= 0.99999)}


def test_one_text_alone_equals_its_row_in_a_batch(pair):
    ours, _ = pair
    batch = ours.encode(TEXTS, "input")
    for i in (0, len(TEXTS) - 1):
        assert np.allclose(ours.encode([TEXTS[i]], "input")[0], batch[i], atol=1e-5)


def test_models_it_cannot_run_are_refused_at_load(tmp_path, pair):
    ours, _ = pair
    src = ours.spec.resolve_source()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(f"{src}/{name}", tmp_path / name)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "position_embedding_type": "relative_key"}))
    spec = ours.spec.model_copy(update={"source": str(tmp_path)})
    with pytest.raises(ValueError, match="absolute positions"):
        TorchBertEncoder(spec, device="cpu")
