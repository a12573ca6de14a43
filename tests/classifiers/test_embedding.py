import numpy as np

from classifiers.embedding import BatchStats, EmbedRequest, embed_batch


def test_an_over_long_text_fails_only_its_own_request(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    reqs = [
        EmbedRequest(["fine", "also fine"], "input", 50),
        EmbedRequest(["ok", "word " * 100], "input", 50),
        EmbedRequest(["label one"], "label", 50),
    ]
    out = embed_batch(enc, reqs)
    assert out[0].vectors.shape == (2, enc.dim) and out[0].too_long is None
    assert out[1].vectors is None and out[1].too_long == 1 and out[1].tokens[1] > 50
    assert out[2].vectors.shape == (1, enc.dim)
    alone = embed_batch(enc, [EmbedRequest(["fine", "also fine"], "input", 50)])[0]
    assert np.allclose(alone.vectors, out[0].vectors, atol=2e-3)


def test_batch_stats_histogram():
    s = BatchStats()
    s.record([1, 2])
    s.record([1])
    snap = s.snapshot()
    assert snap["batches"] == 2 and snap["requests"] == 3 and snap["texts"] == 4
    assert snap["max_requests_in_batch"] == 2 and snap["requests_per_batch_histogram"] == {"1": 1, "2": 1}


def test_a_request_over_its_token_budget_is_refused_after_tokenising_before_the_model(encoders):
    enc = encoders["all-MiniLM-L6-v2"]
    calls = []
    original = enc.encode
    enc.encode = lambda texts, role: calls.append(list(texts)) or original(texts, role)
    try:
        texts = ["one two three four five six", "seven eight"]
        exact = sum(enc.count_tokens(texts, "input"))
        over, fits = embed_batch(enc, [EmbedRequest(texts, max_total_tokens=exact - 1), EmbedRequest(texts, max_total_tokens=exact)])
    finally:
        enc.encode = original
    assert over.over_budget and over.vectors is None and sum(over.tokens) == exact
    assert not fits.over_budget and fits.vectors.shape[0] == 2
    assert calls == [texts]  # the model saw only the request that fits
