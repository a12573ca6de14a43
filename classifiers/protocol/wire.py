"""Jina's wire format as pydantic models, shared by the HTTP ingress and Python handle callers.

Shape errors (wrong types, missing fields) fail here and become 422s; content rules with their own Jina
error codes (empty or duplicate labels, limits, unknown models) are checked by the service core.
"""
from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator


class TextDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Text content to classify.")


class ImageDoc(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Image as an http(s) URL, base64, or a data: URI.")


InputItem = Union[str, TextDoc, ImageDoc]


class Abstain(BaseModel):
    """Our extension: ask for an out-of-scope ("none of these") decision per input. Give exactly one field."""

    model_config = ConfigDict(extra="forbid")

    false_alarm_rate: float | None = Field(
        default=None, gt=0, lt=1,
        description="Target share of in-scope inputs wrongly flagged (e.g. 0.05), turned into a threshold on the "
        "calibrated score (docs/fewshot.md; achieved rates per model in docs/eval/report.md).",
    )
    threshold: float | None = Field(
        default=None, description="A raw threshold on `oos_score` (standardised: about N(0, 1) for in-scope inputs)."
    )

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.false_alarm_rate is None) == (self.threshold is None):
            raise ValueError("give exactly one of `false_alarm_rate` or `threshold`")
        return self


class MultiLabel(BaseModel):
    """Our extension: every label that applies to an input, not only the most probable one."""

    model_config = ConfigDict(extra="forbid")

    threshold: float | None = Field(
        default=None, gt=0, lt=1,
        description="Predict every label whose own probability reaches this. Without it: per-label thresholds a "
        "few-shot classifier learned from its training stream, or the model's default for zero-shot "
        "(`multi_label_threshold` in /v1/models).",
    )


# Request bodies ignore unknown top-level fields, as Jina does (its own product page sends `"action": "list"`);
# nested items stay strict, so `{"text": ..., "image": ...}` is an error rather than a guess.
class ClassifyRequest(BaseModel):
    """Zero-shot (`model` + `labels`) or few-shot (`classifier_id`) classification."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            "examples": [
                {
                    "model": "multilingual-e5-small",
                    "input": ["Calculate the compound interest on a loan", "Write a haiku about autumn"],
                    "labels": ["Simple task", "Complex reasoning", "Creative writing"],
                }
            ]
        }
    )

    model: str | None = Field(default=None, description="Embedding model (zero-shot); see GET /v1/models.")
    classifier_id: str | None = Field(default=None, description="Few-shot classifier to use instead of labels.")
    input: InputItem | list[InputItem] = Field(description="A string, {'text'}, {'image'}, or a list of them.")
    labels: list[str] | dict[str, list[str]] | None = Field(
        default=None, description="Zero-shot labels: a list, or a dict of named label groups (one prediction each)."
    )
    abstain: Abstain | None = Field(
        default=None,
        description="Ours: also decide per input whether it belongs to none of the labels; adds `out_of_scope` and "
        "`oos_score` to each result. Without it the response is exactly Jina's.",
    )
    multi_label: StrictBool | MultiLabel | None = Field(
        default=None,
        description="Ours: `true` or `{\"threshold\": 0.x}` adds `predicted_labels` to each result: every label whose "
        "own probability reaches its threshold (possibly none; per group with label groups), and each label's "
        "`score` is then its own probability (they need not sum to 1). With `abstain`, an out-of-scope input "
        "predicts no label. Without it the response is exactly Jina's.",
    )

    def multi_label_threshold(self) -> MultiLabel | None:
        """The multi-label options, or None in single-label mode (`false`, absent)."""
        if self.multi_label is None or self.multi_label is False:
            return None
        return MultiLabel() if self.multi_label is True else self.multi_label


# A training example's label: one label, or (ours) every label that applies to it.
TrainingLabel = Union[str, list[str]]


class TextTrainingItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(description="Input text for training.")
    label: TrainingLabel = Field(
        description="Label for the input text; ours: a list of every label that applies (multi-label)."
    )


class ImageTrainingItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Input image URL or base64 for training.")
    label: TrainingLabel = Field(
        description="Label for the input image; ours: a list of every label that applies (multi-label)."
    )


TrainingItem = Union[TextTrainingItem, ImageTrainingItem]


class TrainRequest(BaseModel):
    """Create a classifier (`model` + `input`) or update one (`classifier_id` + `input`)."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(default=None, description="Embedding model of a new classifier.")
    classifier_id: str | None = Field(default=None, description="Classifier to update.")
    access: Literal["public", "private"] = Field(default="public", description="Who may use the new classifier.")
    input: TrainingItem | list[TrainingItem] | None = Field(
        default=None,
        description="Labeled examples (may be [] when `labels` declares classes). Required, except on an update "
        "that only sets `learn_from_inputs`.",
    )
    num_iters: int = Field(default=10, description="How strongly this batch counts (weight num_iters/10).")
    labels: list[str] | None = Field(
        default=None,
        description="Ours: classes the classifier must know, with or without examples. A class without examples is "
        "predicted from its label name like zero-shot; examples move it smoothly to the few-shot model.",
    )
    learn_from_inputs: StrictBool | None = Field(
        default=None,
        description="Ours: true makes the classifier learn, without labels, from the inputs its owner classifies "
        "with it (after each answer; nothing is stored but its statistics); false stops that and keeps what was "
        "learned. Omitted: unchanged (off for a new classifier). Other accounts' requests never change it.",
    )

    @model_validator(mode="after")
    def _input_or_setting(self) -> "TrainRequest":
        if self.input is None and (self.classifier_id is None or self.learn_from_inputs is None):
            raise ValueError("`input` is required (labeled examples, or [] with `labels`); only an update that sets "
                             "`learn_from_inputs` may leave it out")
        return self


class PredictionLabel(BaseModel):
    label: str
    score: float


class ClassificationPrediction(BaseModel):
    object: Literal["classification"] = "classification"
    index: int
    prediction: str | dict[str, str]
    score: float | dict[str, float]
    predictions: list[PredictionLabel] | dict[str, list[PredictionLabel]]
    out_of_scope: bool | dict[str, bool] | None = Field(
        default=None, description="Ours, only with `abstain`: the input belongs to none of the labels (per group)."
    )
    oos_score: float | dict[str, float] | None = Field(
        default=None, description="Ours, only with `abstain`: the out-of-scope score (larger = further from every label)."
    )
    predicted_labels: list[str] | dict[str, list[str]] | None = Field(
        default=None,
        description="Ours, only with `multi_label`: every label whose own probability reaches its threshold, most "
        "probable first (possibly none; per group with label groups).",
    )


class Usage(BaseModel):
    total_tokens: int


class ClassificationResponse(BaseModel):
    data: list[ClassificationPrediction]
    usage: Usage


class TrainingResponse(BaseModel):
    classifier_id: str
    num_samples: int
    usage: Usage


class ClassifierSummary(BaseModel):
    """One classifier in a listing: Jina's summary fields, plus `num_samples` (ours)."""

    classifier_id: str = Field(description="The classifier's id (a UUID).")
    user_id: str = Field(description="The owning account's UUID (never an API key).")
    model: str = Field(description="Embedding model the classifier was created with.")
    labels: list[str] = Field(description="Classes the classifier knows, in the order it met them.")
    access: Literal["public", "private"]
    num_samples: int = Field(description="Examples learned so far (each counted once, whatever num_iters).")
    updated_number: int = Field(description="Updates after the create.")
    used_number: int = Field(description="Classify calls (persisted every few seconds).")
    created_at: str = Field(description="ISO 8601 date-time.")
    updated_at: str = Field(description="ISO 8601 date-time.")
    used_at: str | None = Field(default=None, description="ISO 8601 date-time of the last classify, if any.")
    learn_from_inputs: bool = Field(default=False, description="Ours: it learns from its owner's classified inputs.")
    inputs_learned: int = Field(default=0, description="Ours: unlabeled inputs it has learned from so far.")
    is_active: bool = True
    is_latest: bool = True
    metadata_: dict = Field(default_factory=dict, description="Ours: `state_bytes`, the stored statistics' size.")


class DeleteResponse(BaseModel):
    classifier_id: str
    deleted: bool = True


# -- /v1/embeddings (Jina's EmbeddingsV3Request / EmbeddingResponse shapes) -----------------------------------
EmbeddingType = Literal["float", "base64", "binary", "ubinary"]


class EmbeddingsRequest(BaseModel):
    """Jina's embeddings request. Unknown top-level fields are ignored, as on every route."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Embedding model (any served model or alias; /v1/models).")
    input: Union[InputItem, list[InputItem]] = Field(description="A string, {text}, {image}, or a list of them (up to 1024).")
    task: str | None = Field(default=None, description="Accepted for compatibility; every task is embedded the same way here.")
    dimensions: int | None = Field(
        default=None, gt=0, description="Truncate to this many dimensions (re-normalised); below the full size only "
        "for Matryoshka models (`matryoshka` in /v1/models)."
    )
    embedding_type: EmbeddingType | list[EmbeddingType] | None = Field(
        default=None, description="`float` (default), `base64` (little-endian float32), `binary` (packed sign bits as "
        "int8) or `ubinary` (as uint8); a list returns a dict per item keyed by type."
    )
    normalized: bool | None = Field(default=True, description="Embeddings are always L2-normalised here.")
    truncate: bool | None = Field(default=False, description="Accepted; inputs longer than a model's window are chunk-pooled, never truncated.")
    late_chunking: bool | None = Field(default=None, description="Not supported: ignored.")


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: Union[list[float], str, list[int], dict[str, Union[list[float], str, list[int]]]]


class EmbeddingUsage(BaseModel):
    total_tokens: int
    prompt_tokens: int


class EmbeddingsResponse(BaseModel):
    model: str
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    usage: EmbeddingUsage


class ErrorResponse(BaseModel):
    """Every error's body (Jina's): a stable `code`, a human `detail`, the `request_id` to quote."""

    code: str = Field(description="Machine-readable error code, e.g. INPUT_INVALID_LABELS, AUTH_MISSING_API_KEY.")
    detail: str = Field(description="What went wrong, for people.")
    request_id: str = Field(description="The request's id (also the X-Request-ID response header).")
    errors: list[dict] | None = Field(default=None, description="422 only: one entry per invalid field.")


class ModeUsage(BaseModel):
    tokens: int = 0
    requests: int = 0


class UsageReport(BaseModel):
    """`GET /v1/usage` (ours): what the caller's key (or the anonymous account) has been charged."""

    key_id: str = Field(description="The key charged (`anonymous` in anonymous mode); never the key itself.")
    account_id: str = Field(description="The account the key belongs to.")
    tokens: int = Field(description="Tokens charged in total (successful requests only).")
    requests: int = Field(description="Successful requests.")
    by_mode: dict[str, ModeUsage] = Field(description="The same per mode: zeroshot, fewshot, train, embeddings.")
    balance: int | None = Field(default=None, description="The key's token balance, if it has one.")
    balance_left: int | None = Field(default=None, description="What is left of it.")
