"""/v1/embeddings' core with the real embedded encoders in-process (LocalEmbedder), no Ray."""
import asyncio
import base64

import numpy as np
import pytest

from classifiers.catalog.registry import build_registry
from classifiers.embedding.local import LocalEmbedder
from classifiers.embedding.service import EmbeddingsService, truncate
from classifiers.embedding.vectors import LabelCache, Vectors
from classifiers.protocol.errors import InvalidInput, RateLimited, UnsupportedModality
from classifiers.protocol.wire import EmbeddingsRequest
from classifiers.request.limits import Limits
from tests.accounts_fixture import ticket

MODEL = "all-MiniLM-L6-v2"


@pytest.fixture
def service(encoders):
    limits = Limits()
    return EmbeddingsService(
        registry=build_registry(["multilingual-e5-small", MODEL]), limits=limits,
        vectors=Vectors(LocalEmbedder(encoders), limits, LabelCache(10)),
    )


def embed(service, budget=None, **kw):
    return asyncio.run(service.embed(EmbeddingsRequest(**kw), budget=budget))


def test_the_vectors_are_the_models_and_usage_its_tokens(service, encoders):
    texts = ["Will it rain tomorrow?", "The striker scored twice."]
    r = embed(service, model=MODEL, input=[texts[0], {"text": texts[1]}])
    direct = encoders[MODEL].encode(texts, "input")
    got = np.array([d.embedding for d in r.data], np.float32)
    assert [d.index for d in r.data] == [0, 1] and got.shape == (2, 384)
    assert np.allclose(got, direct, atol=1e-5) and np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert r.usage.total_tokens == r.usage.prompt_tokens == sum(encoders[MODEL].count_tokens(texts, "input"))


def test_encodings_agree(service):
    r = embed(service, model=MODEL, input="hello world", embedding_type=["float", "base64", "binary", "ubinary"])
    e = r.data[0].embedding
    f = np.array(e["float"], np.float32)
    assert np.array_equal(np.frombuffer(base64.b64decode(e["base64"]), "<f4"), f)
    bits = np.packbits(f > 0)
    assert e["ubinary"] == bits.tolist() and e["binary"] == bits.view(np.int8).tolist() and len(e["binary"]) == 384 // 8
    assert isinstance(embed(service, model=MODEL, input="x", embedding_type="base64").data[0].embedding, str)


def test_dimensions_only_where_the_model_supports_truncation(service):
    with pytest.raises(InvalidInput, match="Matryoshka"):
        embed(service, model=MODEL, input="hello", dimensions=64)
    assert len(embed(service, model=MODEL, input="hello", dimensions=384).data[0].embedding) == 384
    with pytest.raises(InvalidInput):
        embed(service, model=MODEL, input="hello", dimensions=1000)
    v = truncate(np.array([[3.0, 4.0, 12.0]]), 2)
    assert np.allclose(v, [[0.6, 0.8]])


def test_refusals_before_model_work(service, tmp_path):
    with pytest.raises(UnsupportedModality):
        embed(service, model=MODEL, input=[{"image": "https://example.com/a.png"}])
    with pytest.raises(RateLimited):
        embed(service, budget=ticket(tmp_path, "embeddings", tpm=10), model=MODEL, input=["word " * 50])
    with pytest.raises(InvalidInput, match="Matryoshka"):  # known from the registry: refused before counting
        embed(service, budget=ticket(tmp_path / "b", "embeddings", tpm=10), model=MODEL, input=["word " * 50], dimensions=64)
