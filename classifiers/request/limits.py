"""Request limits, with Jina's published defaults. Configurable per deployment (see serve_app.config)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    max_inputs: int = Field(default=1024, gt=0, description="Inputs per /classify request (Jina's product page: 1024).")
    max_labels: int = Field(default=256, gt=1, description="Zero-shot labels in a flat label list.")
    max_label_groups: int = Field(default=8, gt=0, description="Label groups in a dict of groups.")
    max_labels_per_group: int = Field(default=64, gt=1, description="Labels in one label group.")
    max_input_tokens: int = Field(default=8192, gt=0, description="Tokens per input text (and per label).")
    max_label_chars: int = Field(
        default=256, gt=0,
        description="Characters per label: zero-shot labels, /train's declared labels and training labels (which "
        "are stored in classifier state), checked before normalising or tokenizing. A label is echoed once per "
        "input in the response and kept in the label cache, and a 10 MB label without spaces is a single token "
        "that takes seconds to tokenize, so the token limit alone bounds nothing. 256 is far above class names and "
        "short descriptions (Jina's examples are under 20 characters; CLINC150's longest intent name has 25) and "
        "still fits CLIP's 77-token window with its label template; with it, the labels of a response are at most "
        "inputs x labels x 256 characters.",
    )
    max_label_group_chars: int = Field(
        default=64, gt=0,
        description="Characters per label-group name (the keys of a `labels` dict). A group name is echoed three "
        "times per input (prediction, score, predictions); names are identifiers such as `topic` or `sentiment`.",
    )
    max_response_bytes: int = Field(
        default=64 * 1024 * 1024, gt=0,
        description="Largest zero-shot response, estimated before any model work from inputs x label text (every "
        "label is echoed once per input); over it: 400 INPUT_LIMIT_EXCEEDED.",
    )
    max_train_items: int = Field(
        default=512, gt=0, description="Labeled examples per /train request (Jina's spec: maxItems 512); over it is a 422."
    )
    max_classes: int = Field(default=16, gt=1, description="Distinct labels (classes) per few-shot classifier.")
    max_classifiers_per_owner: int = Field(default=16, gt=0, description="Few-shot classifiers one owner may keep.")
    min_train_labels: int = Field(default=2, ge=1, description="Distinct labels needed to create a classifier.")
    max_num_iters: int = Field(default=100, ge=1, description="Largest accepted num_iters on /train.")
