import pytest

from classifiers.catalog.registry import BUILTIN_MODELS
from classifiers.protocol.errors import (
    InputLimitExceeded,
    InputTooLong,
    InvalidInput,
    InvalidLabels,
    RequestValidationFailed,
    UnsupportedModality,
)
from classifiers.protocol.wire import ImageDoc, TextDoc
from classifiers.request.inputs import Item, check_modalities, clean_text, parse_inputs, parse_training_items


def test_all_input_shapes_flatten_to_items():
    assert parse_inputs("hi", max_inputs=4) == [Item("text", "hi")]
    assert parse_inputs(TextDoc(text="hi"), max_inputs=4) == [Item("text", "hi")]
    got = parse_inputs(["a", TextDoc(text="b"), ImageDoc(image=" https://x/y.png ")], max_inputs=4)
    assert got == [Item("text", "a"), Item("text", "b"), Item("image", "https://x/y.png")]


def test_empty_and_too_many_inputs():
    with pytest.raises(InvalidInput):
        parse_inputs([], max_inputs=4)
    with pytest.raises(InvalidInput, match=r"input\[1\]"):
        parse_inputs(["a", " \n"], max_inputs=4)
    with pytest.raises(InputLimitExceeded, match="5 inputs"):
        parse_inputs(["a"] * 5, max_inputs=4)


def test_clean_text_removes_what_engines_cannot_take():
    assert clean_text("a\x00b") == "a b"
    cleaned = clean_text("x\ud800y")
    cleaned.encode("utf-8")  # no lone surrogate left
    assert cleaned.startswith("x") and cleaned.endswith("y")
    assert clean_text("日本語 😀") == "日本語 😀"


def test_images_refused_by_text_models_naming_image_models():
    spec = next(s for s in BUILTIN_MODELS if s.name == "all-MiniLM-L6-v2")
    with pytest.raises(UnsupportedModality, match=r"input\[1\].*jina-clip-v2"):
        check_modalities([Item("text", "a"), Item("image", "u")], spec, ["jina-clip-v2"])


def test_absurdly_long_text_is_refused_before_tokenizing():
    with pytest.raises(InputTooLong, match=r"input\[1\] has 3300 characters"):
        parse_inputs(["ok", "x" * 3300], max_inputs=4, max_tokens=100)
    assert parse_inputs(["x" * 3200], max_inputs=4, max_tokens=100)[0].value == "x" * 3200


def test_training_labels_are_normalised_like_zero_shot_labels():
    from classifiers.protocol.wire import TextTrainingItem

    raw = [TextTrainingItem(text="t", label=lab) for lab in ["weather ", "weather", " Cafe\u0301", "Caf\u00e9", "Weather"]]
    _, labels = parse_training_items(raw, max_items=10)
    assert labels == ["weather", "weather", "Caf\u00e9", "Caf\u00e9", "Weather"]
    with pytest.raises(InvalidLabels):
        parse_training_items([TextTrainingItem(text="t", label=" \u3000 ")], max_items=10)


def test_too_many_training_items_is_a_schema_error():
    from classifiers.protocol.wire import TextTrainingItem

    with pytest.raises(RequestValidationFailed) as err:
        parse_training_items([TextTrainingItem(text="t", label="x")] * 6, max_items=5)
    assert err.value.status == 422 and err.value.errors[0]["field"] == "input"


def test_training_and_declared_labels_have_a_length_limit():
    """Training labels become class names stored in the classifier's state: the same limit as zero-shot labels,
    checked before normalising, naming the position, never echoing the whole label."""
    from classifiers.protocol.wire import TextTrainingItem
    from classifiers.request.inputs import parse_declared_labels

    items = [TextTrainingItem(text="t", label="a"), TextTrainingItem(text="t", label="y" * 5_000_000)]
    with pytest.raises(InvalidLabels) as info:
        parse_training_items(items, max_items=10)
    assert info.value.detail.startswith("input[1]: label has 5000000 characters; the limit is 256")
    assert len(info.value.detail) < 160
    with pytest.raises(InvalidLabels, match=r"input\[0\]: label has 11 characters; the limit is 10"):
        parse_training_items([TextTrainingItem(text="t", label="z" * 11)], max_items=10, max_label_chars=10)
    with pytest.raises(InvalidLabels) as info:
        parse_declared_labels(["fine", "d" * 300])
    assert info.value.detail.startswith("labels[1] has 300 characters; the limit is 256") and "d" * 41 not in info.value.detail
    assert parse_declared_labels(["q" * 256, " q" * 1]) == ["q" * 256, "q"]
