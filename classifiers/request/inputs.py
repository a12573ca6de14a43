"""Turn Jina's flexible `input` field into a flat list of typed items, with the request limits applied."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal, Union

from classifiers.catalog.registry import ModelSpec
from classifiers.protocol.errors import (
    InputLimitExceeded,
    InputTooLong,
    InvalidInput,
    InvalidLabels,
    RequestValidationFailed,
    UnsupportedModality,
)
from classifiers.protocol.wire import ImageDoc, ImageTrainingItem, InputItem, TextDoc, TrainingItem


@dataclass(frozen=True)
class Item:
    kind: Literal["text", "image"]
    value: str


# A token is almost never longer than this many characters: longer texts cannot fit the token limit, and are
# refused before a tokenizer spends time (and memory) on them.
MAX_CHARS_PER_TOKEN = 32


def check_length(text: str, where: str, max_tokens: int) -> None:
    if len(text) > max_tokens * MAX_CHARS_PER_TOKEN:
        raise InputTooLong(f"{where} has {len(text)} characters, far over the limit of {max_tokens} tokens")


def clean_text(text: str) -> str:
    """Make any JSON string safe for every engine: no lone surrogates, no NUL (C engines stop at NUL)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text.replace("\x00", " ")


LABEL_PREVIEW_CHARS = 40  # of an over-long label or group name, quoted in the error detail (never the whole)
DEFAULT_MAX_LABEL_CHARS = 256  # Limits.max_label_chars's default, for callers that do not pass their limits


def preview(text: str) -> str:
    """``text`` quoted for an error detail, cut to LABEL_PREVIEW_CHARS characters: a client's 10 MB label must not
    come back in the error (nor in logs that record error details)."""
    if len(text) <= LABEL_PREVIEW_CHARS:
        return repr(text)
    return repr(text[:LABEL_PREVIEW_CHARS]) + "..."


def check_label_chars(label: str, where: str, max_chars: int) -> None:
    """Refuse a label (or group name) over ``max_chars`` characters, naming where it is: before it is normalised,
    tokenized, embedded, cached or echoed."""
    if len(label) > max_chars:
        raise InvalidLabels(
            f"{where} has {len(label)} characters; the limit is {max_chars} (it starts {preview(label)})"
        )


def checked_label(label: str, where: str, max_chars: int) -> str:
    """The label's canonical form (:func:`normalize_label`), with the length limit applied before normalising and
    again after (NFC can lengthen a few scripts' text)."""
    check_label_chars(label, where, max_chars)
    normalized = normalize_label(label)
    check_label_chars(normalized, where, max_chars)
    return normalized


def normalize_label(label: str) -> str:
    """The one canonical form of a label: Unicode NFC, surrounding whitespace trimmed, case kept.

    Jina treats `"Sport"`, `" Sport"` and the NFD spelling of a label as one label (its own product page sends
    every label twice); comparing labels in this form makes zero-shot labels, label groups and training
    labels agree on what "the same label" means."""
    return unicodedata.normalize("NFC", clean_text(label)).strip()


def parse_inputs(raw: InputItem | list[InputItem], *, max_inputs: int, max_tokens: int = 8192) -> list[Item]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise InvalidInput("`input` is empty: send at least one text or image")
    if len(items) > max_inputs:
        raise InputLimitExceeded(f"{len(items)} inputs in one request; the limit is {max_inputs}")
    out = []
    for i, it in enumerate(items):
        if isinstance(it, ImageDoc):
            if not it.image.strip():
                raise InvalidInput(f"input[{i}]: image is empty")
            out.append(Item("image", it.image.strip()))
            continue
        text = it.text if isinstance(it, TextDoc) else it
        if not text.strip():
            raise InvalidInput(f"input[{i}]: text is empty")
        check_length(text, f"input[{i}]", max_tokens)
        out.append(Item("text", clean_text(text)))
    return out


def check_modalities(items: list[Item], spec: ModelSpec, image_models: list[str]) -> None:
    """Refuse inputs the model cannot embed, before any work is scheduled."""
    for i, it in enumerate(items):
        if it.kind not in spec.modalities:
            accepted = ", ".join(image_models) or "none configured"
            raise UnsupportedModality(
                f"input[{i}] is an {it.kind}, but model {spec.name!r} embeds only "
                f"{'/'.join(sorted(spec.modalities))}. Models that accept images: {accepted}"
            )


def parse_declared_labels(labels: list[str] | None, *, max_label_chars: int = DEFAULT_MAX_LABEL_CHARS) -> list[str]:
    """`/train`'s declared classes (our extension): normalised like every label, duplicates collapsed; each at most
    ``max_label_chars`` characters (they are stored in the classifier's state)."""
    out = []
    for i, label in enumerate(labels or []):
        normalized = checked_label(label, f"labels[{i}]", max_label_chars)
        if not normalized:
            raise InvalidLabels(f"labels[{i}] is empty")
        out.append(normalized)
    return list(dict.fromkeys(out))


ExampleLabels = Union[str, list[str]]  # one label, or (multi-label) every label that applies, in order, distinct


def labels_of(examples: list[ExampleLabels]) -> list[str]:
    """Every label the examples name, each once, in the order they first appear."""
    return list(dict.fromkeys(lab for y in examples for lab in ([y] if isinstance(y, str) else y)))


def _example_labels(label: str | list[str], where: str, max_chars: int) -> ExampleLabels:
    """One example's label(s), normalised; a list of one is that label, duplicates in a list collapse."""
    if isinstance(label, str):
        out = checked_label(label, f"{where}: label", max_chars)
        if not out:
            raise InvalidLabels(f"{where}: label is empty")
        return out
    if not label:
        raise InvalidLabels(f"{where}: the label list is empty: give at least one label that applies")
    labels = [checked_label(lab, f"{where}: label {j}", max_chars) for j, lab in enumerate(label)]
    for j, lab in enumerate(labels):
        if not lab:
            raise InvalidLabels(f"{where}: label {j} is empty")
    distinct = list(dict.fromkeys(labels))
    return distinct[0] if len(distinct) == 1 else distinct


def parse_training_items(
    raw: TrainingItem | list[TrainingItem], *, max_items: int, max_tokens: int = 8192,
    max_label_chars: int = DEFAULT_MAX_LABEL_CHARS,
) -> tuple[list[Item], list[ExampleLabels]]:
    """Labeled examples -> (items, labels per item). A label is normalised (:func:`normalize_label`), must not be
    empty and has at most ``max_label_chars`` characters (it becomes a class name stored in the classifier's state).
    An item's label may be a list (ours, multi-label): every label that applies to it, at least one."""
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise InvalidInput("`input` is empty: send at least one labeled example")
    if len(items) > max_items:
        # Jina's spec caps /train at `maxItems` (512): a schema rule, so a 422 like every other schema error.
        raise RequestValidationFailed(
            f"Invalid request: input: {len(items)} training examples in one request; the limit is {max_items}",
            errors=[{"field": "input", "message": f"List should have at most {max_items} items", "type": "too_long"}],
        )
    out: list[Item] = []
    labels: list[ExampleLabels] = []
    for i, it in enumerate(items):
        label = _example_labels(it.label, f"input[{i}]", max_label_chars)
        if isinstance(it, ImageTrainingItem):
            if not it.image.strip():
                raise InvalidInput(f"input[{i}]: image is empty")
            out.append(Item("image", it.image.strip()))
        else:
            if not it.text.strip():
                raise InvalidInput(f"input[{i}]: text is empty")
            check_length(it.text, f"input[{i}]", max_tokens)
            out.append(Item("text", clean_text(it.text)))
        labels.append(label)
    return out, labels
