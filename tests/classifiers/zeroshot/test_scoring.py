import numpy as np
import pytest

from classifiers.catalog.registry import build_registry
from classifiers.protocol.errors import InvalidInput, InvalidLabels, LabelLimitExceeded
from classifiers.protocol.wire import Abstain
from classifiers.request.limits import Limits
from classifiers.zeroshot.scoring import parse_labels, predictions, score, softmax


def test_softmax_is_a_distribution_and_stable_for_large_logits():
    p = softmax(np.array([[1000.0, 999.0, -1000.0]]))
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    assert p[0, 0] > p[0, 1] > p[0, 2]


def test_score_scale_sharpens_without_changing_the_ranking():
    x = np.array([[1.0, 0.0]])
    labels = np.array([[0.9, np.sqrt(1 - 0.81)], [0.5, np.sqrt(0.75)]])
    soft, sharp = score(x, labels, 1.0), score(x, labels, 100.0)
    assert soft.argmax() == sharp.argmax() == 0
    assert sharp[0, 0] > soft[0, 0]


def test_flat_labels_and_groups_parse():
    flat = parse_labels(["a", "b"], Limits())
    assert not flat.grouped and flat.groups == {None: ["a", "b"]}
    grouped = parse_labels({"g1": ["a", "b"], "g2": ["b", "c"]}, Limits())
    assert grouped.grouped and grouped.unique() == ["a", "b", "c"]


@pytest.mark.parametrize(
    "labels, err",
    [
        (None, InvalidLabels),
        ([], InvalidLabels),
        (["a"], InvalidLabels),
        (["a", " "], InvalidLabels),
        (["a", "a"], InvalidLabels),  # one distinct label after collapsing
        (["\u00e1", " a\u0301 "], InvalidLabels),  # NFC and trimmed NFD spellings of "á" are one label
        ({}, InvalidLabels),
        ({" ": ["a", "b"]}, InvalidLabels),
        ({"g": ["a"]}, InvalidLabels),
        (["l%d" % i for i in range(5)], LabelLimitExceeded),
        ({"g%d" % i: ["a", "b"] for i in range(3)}, LabelLimitExceeded),
        ({"g": ["l%d" % i for i in range(4)]}, LabelLimitExceeded),
        ({"g": ["a", "a "]}, InvalidLabels),
    ],
)
def test_bad_labels_raise_typed_errors(labels, err):
    with pytest.raises(err):
        parse_labels(labels, Limits(max_labels=4, max_label_groups=2, max_labels_per_group=3))


def test_predictions_keep_label_order_and_pick_the_best():
    vecs = {"x": np.array([1.0, 0.0]), "y": np.array([0.0, 1.0])}
    inputs = np.array([[0.0, 1.0], [1.0, 0.0]])
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    out = predictions(inputs, parse_labels(["x", "y"], Limits()), vecs, spec)
    assert [o.prediction for o in out] == ["y", "x"]
    assert [p.label for p in out[0].predictions] == ["x", "y"]
    grouped = predictions(inputs, parse_labels({"g": ["x", "y"], "h": ["y", "x"]}, Limits()), vecs, spec)
    assert out[0].out_of_scope is None and out[0].oos_score is None  # Jina's result unless abstain is asked for
    assert grouped[0].prediction == {"g": "y", "h": "y"} and grouped[1].score["h"] == pytest.approx(grouped[1].score["g"])


def test_duplicate_labels_collapse_to_the_first_occurrence():
    # Jina's product page sends each of its three labels twice; the answer lists each once, in first-seen order.
    page = ["Simple task", "Complex reasoning", "Creative writing", "Complex reasoning", "Creative writing", "Simple task"]
    assert parse_labels(page, Limits()).groups == {None: ["Simple task", "Complex reasoning", "Creative writing"]}


def test_labels_compare_after_nfc_and_trimming_but_keep_case():
    nfd, nfc = "Cafe\u0301", "Caf\u00e9"
    got = parse_labels([" Sport", "Sport", "Sport\t", nfd, nfc, "sport", "\u3000Sport"], Limits()).groups[None]
    assert got == ["Sport", nfc, "sport"]


def test_groups_collapse_their_own_duplicates_independently():
    ls = parse_labels({"topic": ["sport", "sport ", "news"], "tone": ["calm", "angry", " calm"]}, Limits())
    assert ls.groups == {"topic": ["sport", "news"], "tone": ["calm", "angry"]}
    assert ls.unique() == ["sport", "news", "calm", "angry"]


def test_label_limits_count_distinct_labels():
    limits = Limits(max_labels=3)
    assert parse_labels(["a", "b", "c", "a", "b", "c"], limits).groups[None] == ["a", "b", "c"]
    with pytest.raises(LabelLimitExceeded, match="4 labels"):
        parse_labels(["a", "b", "c", "d", "a"], limits)


def test_abstain_flags_inputs_far_from_every_label_in_each_group():
    spec = build_registry(["all-MiniLM-L6-v2"]).get("all-MiniLM-L6-v2")
    vecs = {"x": np.array([1.0, 0.0, 0.0]), "y": np.array([0.0, 1.0, 0.0])}
    inputs = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # on label x; orthogonal to both labels
    out = predictions(inputs, parse_labels(["x", "y"], Limits()), vecs, spec, Abstain(false_alarm_rate=0.05))
    assert [o.out_of_scope for o in out] == [False, True]
    assert out[1].oos_score > out[0].oos_score and [p.label for p in out[1].predictions] == ["x", "y"]
    grouped = predictions(inputs, parse_labels({"g": ["x", "y"]}, Limits()), vecs, spec, Abstain(threshold=100.0))
    assert grouped[1].out_of_scope == {"g": False}  # a raw threshold nothing reaches
    hub = build_registry(["jina-embeddings-v3-hub"]).get("jina-embeddings-v3-hub")
    with pytest.raises(InvalidInput, match="abstain"):
        predictions(inputs, parse_labels(["x", "y"], Limits()), vecs, hub, Abstain(threshold=1.0))


def test_label_length_is_limited_before_any_work_and_never_echoed_whole():
    """A 10 MB label without spaces is one [UNK] token for MiniLM: the token limit never catches it, tokenizing it
    takes seconds, and it would be echoed once per input. It is refused by its length, naming its position, with
    only its first 40 characters in the detail."""
    limits = Limits()
    huge = "x" * 10_000_000
    with pytest.raises(InvalidLabels) as info:
        parse_labels(["ok", "fine", huge], limits)
    detail = info.value.detail
    assert info.value.code == "INPUT_INVALID_LABELS" and info.value.status == 400
    assert detail.startswith("label 2 has 10000000 characters; the limit is 256") and len(detail) < 160, detail
    with pytest.raises(InvalidLabels, match=r"label 1 in group 'topic' has 257 characters"):
        parse_labels({"topic": ["a", "b" * 257]}, limits)
    assert parse_labels(["a" * 256, "b"], limits).groups[None][0] == "a" * 256  # the limit itself is fine


def test_label_group_name_length_is_limited_and_never_echoed_whole():
    """A 105 KB group name made a 307 MB response; it is refused by its length, before its labels are looked at."""
    name = "g" * 105_000
    with pytest.raises(InvalidLabels) as info:
        parse_labels({"ok": ["a", "b"], name: ["a", "x" * 10_000_000]}, Limits())
    detail = info.value.detail
    assert detail.startswith("the name of label group 1 has 105000 characters; the limit is 64") and len(detail) < 160
    with pytest.raises(InvalidLabels, match="limit is 10"):
        parse_labels({"g" * 11: ["a", "b"]}, Limits(max_label_group_chars=10))
    # Errors about a group's labels quote the group's name cut short, too.
    with pytest.raises(InvalidLabels) as info:
        parse_labels({"n" * 64: ["a", " "]}, Limits())
    assert "n" * 41 not in info.value.detail


def test_label_length_counts_the_normalised_form_too():
    # U+0958 is excluded from composition: NFC spells it as two characters, so 200 of them become 400.
    with pytest.raises(InvalidLabels, match="has 400 characters"):
        parse_labels(["\u0958" * 200, "b"], Limits())
