"""The CLI: labels, groups, examples and CSV files, inputs from arguments and stdin, usage errors (exit 2) before any
request, the default model; and whole commands against a real local HTTP server (tables, --json, errors: exit 1).
The CLI against the real service: tests/serve_app/test_python_client.py."""
from __future__ import annotations

import io
import json

import pytest

from classifier_client import cli


def test_labels_groups_and_examples():
    assert cli.split_labels("a, b ,c") == ["a", "b", "c"]
    assert cli.split_labels('["a, b", "c"]') == ["a, b", "c"]
    assert cli.parse_group("topic=weather,sport") == ("topic", ["weather", "sport"])
    assert cli.parse_example("x = 1 means y=math") == {"text": "x = 1 means y", "label": "math"}
    for bad in ("a,,b", "[1, 2]", "[oops"):
        with pytest.raises(cli.UsageError):
            cli.split_labels(bad)
    for bad in ("no label", "=label", "text="):
        with pytest.raises(cli.UsageError):
            cli.parse_example(bad)
    with pytest.raises(cli.UsageError):
        cli.parse_group("no-equals")


def test_read_examples_csv_header_or_two_columns():
    f = io.StringIO("id,label,text\n1,weather,\"Rain, then sun\"\n\n2,sport,Goal!\n")
    assert cli.read_examples_csv(f) == [{"text": "Rain, then sun", "label": "weather"}, {"text": "Goal!", "label": "sport"}]
    assert cli.read_examples_csv(io.StringIO("Rain all day,weather\nGoal,sport\n")) == [
        {"text": "Rain all day", "label": "weather"}, {"text": "Goal", "label": "sport"}]
    assert cli.read_examples_csv(io.StringIO("Image,Label\nhttps://x/cat.jpg,cat\n")) == [{"image": "https://x/cat.jpg", "label": "cat"}]
    for bad in ("", "text,label\n", "a,b,c\n", "text,label\nonly-text\n", "text,label\nsome text, \n"):
        with pytest.raises(cli.UsageError):
            cli.read_examples_csv(io.StringIO(bad))


def test_cli_inputs_and_usage_errors_without_a_service():
    assert cli.read_inputs([], [], io.StringIO("first\n\n  \nsecond\r\n")) == ["first", "second"]
    assert cli.read_inputs(["-"], [], io.StringIO("x\n")) == ["x"]
    assert cli.read_inputs(["a"], ["https://x/y.jpg"], io.StringIO("")) == ["a", {"image": "https://x/y.jpg"}]
    out, err = io.StringIO(), io.StringIO()
    # nothing to send: refused before any request (the URL is never contacted)
    assert cli.main(["--url", "http://example.invalid", "train"], stdin=io.StringIO(""), stdout=out, stderr=err) == 2
    assert "no examples" in err.getvalue() and out.getvalue() == ""
    assert cli.main(["--url", "http://example.invalid", "train", "/nonexistent.csv"], stdout=out, stderr=err) == 2
    assert "/nonexistent.csv" in err.getvalue()
    with pytest.raises(SystemExit) as e:  # --labels or --classifier is required
        cli.main(["classify", "hello"], stderr=io.StringIO())
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli.main(["classify", "hello", "--labels", "a,b", "--classifier", "c"], stderr=io.StringIO())


def test_default_model_unless_a_classifier_is_named(monkeypatch):
    monkeypatch.delenv("CLASSIFIER_MODEL", raising=False)
    parse = cli.build_parser().parse_args
    assert cli.default_model(parse(["classify", "x", "--labels", "a,b"])) == "jina-embeddings-v3"
    assert cli.default_model(parse(["classify", "x", "--labels", "a,b", "--model", "m"])) == "m"
    assert cli.default_model(parse(["classify", "x", "--classifier", "c"])) is None
    assert cli.default_model(parse(["train", "--classifier", "c", "--example", "t=l"])) is None
    monkeypatch.setenv("CLASSIFIER_MODEL", "all-MiniLM-L6-v2")
    assert cli.default_model(parse(["embed", "x"])) == "all-MiniLM-L6-v2"


def _run(server, *argv: str, stdin: str = "") -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(["--url", server.url, "--api-key", "", *argv], stdin=io.StringIO(stdin), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


RESULT = {"data": [{"index": i, "prediction": p, "score": s, "predictions": [{"label": p, "score": s}]}
                   for i, (p, s) in enumerate([("weather", 0.91), ("sport", 0.75)])], "usage": {"total_tokens": 9}}


def test_classify_prints_a_table_or_the_raw_body(server):
    server.answer((200, RESULT))
    code, out, err = _run(server, "classify", "--labels", "weather,sport", "--model", "m", stdin="Rain?\nGoal?\n")
    assert code == 0 and out.splitlines() == ["INPUT  PREDICTION  SCORE", "Rain?  weather     0.910",
                                               "Goal?  sport       0.750"]
    assert err == "usage: 9 tokens\n"
    assert server.seen[0].body == {"model": "m", "input": ["Rain?", "Goal?"], "labels": ["weather", "sport"]}
    code, out, _ = _run(server, "classify", "Rain?", "--labels", "weather,sport", "--json", "--abstain-rate", "0.05")
    assert code == 0 and json.loads(out) == RESULT
    assert server.seen[-1].body["abstain"] == {"false_alarm_rate": 0.05}
    assert server.seen[-1].body["model"] == "jina-embeddings-v3"  # the default model: Jina's name


def test_train_from_examples_and_models_table(server):
    server.answer((200, {"classifier_id": "c1", "num_samples": 2, "usage": {"total_tokens": 4}}))
    code, out, _ = _run(server, "train", "--model", "m", "--example", "Rain=weather", "--example", "Goal=sport|news")
    assert code == 0 and out.split() == ["CLASSIFIER_ID", "NUM_SAMPLES", "TOKENS", "c1", "2", "4"]
    assert server.seen[0].body["input"] == [{"text": "Rain", "label": "weather"},
                                            {"text": "Goal", "label": ["sport", "news"]}]
    assert server.seen[0].headers["idempotency-key"]
    card = {"id": "m", "name": "m", "hugging_face_id": "", "description": "a model", "input_modalities": ["text"],
            "output_modalities": ["embeddings"], "context_length": 512, "max_output_length": 384, "created": 0,
            "quantization": "", "pricing": {k: "0" for k in ("prompt", "completion", "image", "request",
                                                             "input_cache_read", "input_cache_write")},
            "supported_features": [], "supported_sampling_parameters": [], "datacenters": []}
    server.answer((200, {"data": [card]}))
    code, out, _ = _run(server, "models")
    assert code == 0 and out.splitlines()[1].split() == ["m", "-", "text", "384", "a", "model"]


def test_an_error_answer_exits_1_with_code_and_request_id(server):
    error = {"code": "INPUT_INVALID_LABELS", "detail": "At least 2 distinct labels are required", "request_id": "r7"}
    server.answer((400, error))
    code, out, err = _run(server, "classify", "x", "--labels", "a,a")
    assert (code, out) == (1, "")
    assert err == "INPUT_INVALID_LABELS: At least 2 distinct labels are required (request_id r7)\n"
    code, out, err = _run(server, "classify", "x", "--labels", "a,a", "--json")
    assert code == 1 and json.loads(out) == error  # --json: the error body on stdout as well
