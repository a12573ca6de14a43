"""Fast unit tests (no Ray, no service) of the client's and the CLI's pure parts: Retry-After parsing and retry
decisions, error bodies, request bodies (Jina's fields only unless an extension is asked for), tolerant response
parsing, CSV/label/example parsing and table formatting. The client against the real service:
tests/serve_app/test_client.py."""
from __future__ import annotations

import email.utils
import io
import pickle
import socket

import httpx
import pytest

from classifiers.protocol.wire import Abstain, ClassificationResponse, ClassifierSummary, TextDoc, TrainingResponse
from serve_app import cli
from serve_app.client import (
    ApiConnectionError,
    ApiError,
    Client,
    _parse_list,
    _parse_train,
    classify_body,
    embeddings_body,
    parse_retry_after,
    retry_wait,
    train_body,
)


# -- Retry-After and retry decisions -----------------------------------------------------------------------------
def test_parse_retry_after_seconds_dates_and_garbage():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    assert parse_retry_after("2.5") == 2.5
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)
    assert parse_retry_after(email.utils.formatdate(now - 60, usegmt=True), now=now) == 0.0
    for bad in (None, "", "soon", "-1", "nan", "inf", "Wed, 99 Foo 2015 07:28:00 GMT"):
        assert parse_retry_after(bad) is None, bad


def test_retry_wait_honours_retry_after_within_bounds():
    assert retry_wait(0, status=429, retry_after=2.0) == 2.0
    assert retry_wait(0, status=503, retry_after=0.0) == 0.0
    assert retry_wait(0, status=429, retry_after=31.0, max_retry_wait=30) is None  # raise at once, not wait less
    assert retry_wait(0, status=429, retry_after=31.0, max_retry_wait=60) == 31.0
    assert [retry_wait(a, status=504, max_retries=10) for a in range(6)] == [0.5, 1, 2, 4, 8, 8]
    assert retry_wait(0, status=None, backoff=0.1) == 0.1  # a connection failure
    assert retry_wait(3, status=429, retry_after=1.0, max_retries=3) is None
    for status in (400, 401, 404, 409, 422, 500, 502):
        assert retry_wait(0, status=status, retry_after=1.0) is None, status


# -- errors -------------------------------------------------------------------------------------------------------
def test_api_error_from_jina_body_headers_and_other_bodies():
    r = httpx.Response(429, json={"code": "RATE_REQUEST_LIMIT_EXCEEDED", "detail": "Too many.", "request_id": "abc"},
                       headers={"Retry-After": "4", "X-Request-ID": "other"})
    e = ApiError.from_response(r)
    assert (e.status, e.code, e.detail, e.request_id, e.retry_after) == (429, "RATE_REQUEST_LIMIT_EXCEEDED", "Too many.", "abc", 4.0)
    assert str(e) == "RATE_REQUEST_LIMIT_EXCEEDED: Too many. (request_id abc)"
    errors = [{"field": "input", "message": "Field required", "type": "missing"}]
    e = ApiError.from_response(httpx.Response(422, json={"code": "INPUT_VALIDATION_FAILED", "detail": "Invalid", "request_id": "r", "errors": errors}))
    assert e.errors == errors
    # a proxy's HTML page: no code in the body, the request id from the header
    e = ApiError.from_response(httpx.Response(502, text="<html><body>Bad   gateway</body></html>", headers={"X-Request-ID": "h1"}))
    assert (e.code, e.request_id, e.retry_after) == ("HTTP_502", "h1", None) and "Bad gateway" in e.detail
    # FastAPI's default 422 (a service that is not ours): detail is a list
    e = ApiError.from_response(httpx.Response(422, json={"detail": [{"loc": ["body", "input"], "msg": "Field required"}]}))
    assert e.code == "HTTP_422" and e.detail == "Field required" and e.errors[0]["msg"] == "Field required"
    assert str(ApiError(404, "RESOURCE_NOT_FOUND", "gone")) == "RESOURCE_NOT_FOUND: gone"
    copy = pickle.loads(pickle.dumps(e))
    assert (type(copy), copy.code, copy.errors, str(copy)) == (ApiError, e.code, e.errors, str(e))
    c = pickle.loads(pickle.dumps(ApiConnectionError("refused")))
    assert isinstance(c, ApiConnectionError) and (c.status, c.code) == (0, "CONNECTION_ERROR")


def test_connection_refused_is_retried_then_raised_as_api_connection_error():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sent = []
    http = httpx.Client(event_hooks={"request": [lambda req: sent.append(req.url.path)]})
    with Client(f"http://127.0.0.1:{port}", http_client=http, max_retries=2, backoff=0.01) as c:
        with pytest.raises(ApiConnectionError) as err:
            c.list()
    http.close()
    assert sent == ["/v1/classifiers"] * 3
    assert err.value.status == 0 and err.value.code == "CONNECTION_ERROR" and isinstance(err.value, ApiError)


# -- request bodies: Jina's wire format, our extensions only when set -------------------------------------------
def test_classify_body_sends_only_what_was_given():
    assert classify_body(["a", "b"], labels=["x", "y"]) == {"input": ["a", "b"], "labels": ["x", "y"]}
    assert classify_body("one", classifier_id="c1") == {"classifier_id": "c1", "input": ["one"]}
    body = classify_body([TextDoc(text="t"), {"image": "https://x/y.jpg"}], labels={"g": ("x", "y")}, model="m")
    assert body == {"model": "m", "input": [{"text": "t"}, {"image": "https://x/y.jpg"}], "labels": {"g": ["x", "y"]}}
    assert classify_body(["a"], labels=["x", "y"], abstain=0.05)["abstain"] == {"false_alarm_rate": 0.05}
    assert classify_body(["a"], labels=["x", "y"], abstain=Abstain(threshold=2.5))["abstain"] == {"threshold": 2.5}
    with pytest.raises(TypeError):
        classify_body(["a"], labels="x,y")
    with pytest.raises(TypeError):
        classify_body([3.5], labels=["x", "y"])


def test_train_body_create_update_and_declared_labels():
    create = train_body([("Rain", "weather"), {"text": "Goal", "label": "sport"}], model="m")
    assert create == {"model": "m", "access": "private", "num_iters": 10,
                      "input": [{"text": "Rain", "label": "weather"}, {"text": "Goal", "label": "sport"}]}
    update = train_body([("Snow", "weather")], classifier_id="c1", model="ignored", access="public", num_iters=3)
    assert update == {"classifier_id": "c1", "input": [{"text": "Snow", "label": "weather"}], "num_iters": 3}
    assert train_body([], model="m", labels=["a", "b"])["labels"] == ["a", "b"]
    with pytest.raises(TypeError):
        train_body(["just text"])


def test_embeddings_body_drops_unset_options():
    assert embeddings_body("hi", model="m", task=None, dimensions=64, normalized=None) == {"model": "m", "input": ["hi"], "dimensions": 64}


def test_train_calls_carry_a_fresh_idempotency_key_unless_given():
    c = Client("http://example.invalid", api_key="")
    k1 = c._train_call([("a", "x")], None, None, "private", 10, None, None).headers["Idempotency-Key"]
    k2 = c._train_call([("a", "x")], None, None, "private", 10, None, None).headers["Idempotency-Key"]
    assert k1 != k2 and len(k1) == 32
    assert c._train_call([("a", "x")], None, None, "private", 10, None, "mine").headers == {"Idempotency-Key": "mine"}
    c.close()


def test_only_calls_with_an_idempotency_key_retry_a_409():
    """409 CONFLICT_RESOURCE_BUSY: the key's first request is still running; a train (which resends its own key)
    waits and retries to get that answer. Without a key a 409 is not the client's to retry."""
    from serve_app.client import IDEMPOTENT_RETRY_STATUSES

    c = Client("http://example.invalid", api_key="")
    train = c._train_call([("a", "x")], None, None, "private", 10, None, None)
    classify = c._classify_call(["a"], ["x", "y"], "m", None, None)
    assert train.retry_statuses == IDEMPOTENT_RETRY_STATUSES and 409 not in classify.retry_statuses
    assert retry_wait(0, status=409, retry_after=1.0, statuses=train.retry_statuses) == 1.0
    assert retry_wait(0, status=409, retry_after=1.0, statuses=classify.retry_statuses) is None
    assert retry_wait(0, status=422, retry_after=1.0, statuses=train.retry_statuses) is None  # a reused key: final
    c.close()


def test_client_settings_from_arguments_and_environment(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_API_KEY", "rck_env")
    monkeypatch.setenv("CLASSIFIER_URL", "http://env:9/")
    c = Client()
    assert c.base_url == "http://env:9" and c._headers["Authorization"] == "Bearer rck_env"
    c.close()
    c = Client("http://arg:1", api_key="")  # "" sends no key even with the variable set
    assert c.base_url == "http://arg:1" and "Authorization" not in c._headers
    c.close()
    monkeypatch.delenv("CLASSIFIER_URL")
    monkeypatch.delenv("CLASSIFIER_API_KEY")
    c = Client()
    assert c.base_url == "http://127.0.0.1:8000" and c.api_key is None and "rck" not in repr(c)
    c.close()


# -- tolerant parsing of Jina's hosted answers -------------------------------------------------------------------
def test_responses_without_our_extra_fields_still_parse():
    jina = {"classifier_id": "c", "user_id": "u", "model": "jina-embeddings-v3", "labels": ["a", "b"], "access": "private",
            "updated_number": 0, "used_number": 0, "created_at": "2025-01-01T00:00:00", "updated_at": "2025-01-01T00:00:00"}
    (s,) = _parse_list([jina])
    assert isinstance(s, ClassifierSummary) and s.num_samples is None and s.labels == ["a", "b"]
    (s,) = _parse_list([{**jina, "num_samples": 4}])
    assert type(s) is ClassifierSummary and s.num_samples == 4
    t = _parse_train({"classifier_id": "c", "num_samples": 2})
    assert isinstance(t, TrainingResponse) and t.usage.total_tokens == 0
    c = Client("http://example.invalid", api_key="")
    assert c._delete_call("c9").parse({"message": "ok"}).classifier_id == "c9"
    with pytest.raises(ValueError):
        c._delete_call("a/../b")
    c.close()


# -- CLI helpers ----------------------------------------------------------------------------------------------------
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


def test_table_formatting_widths_and_clipping():
    assert cli.display_width("abc") == 3 and cli.display_width("分析") == 4 and cli.display_width("e\u0301") == 1
    assert cli.clip("a  b\nc", 10) == "a b c"
    assert cli.clip("abcdefghij", 5) == "abcd…" and cli.display_width(cli.clip("分析使用CRISPR", 6)) <= 6
    table = cli.format_table(["NAME", "SCORE"], [["分析", "0.5"], ["abcdef", "0.25"]], right=[1])
    assert table.splitlines() == ["NAME    SCORE", "分析      0.5", "abcdef   0.25"]


def test_classify_table_plain_groups_and_abstain():
    plain = ClassificationResponse.model_validate({"data": [
        {"index": 0, "prediction": "weather", "score": 0.91234, "predictions": [{"label": "weather", "score": 0.91234}, {"label": "sport", "score": 0.08766}]},
    ], "usage": {"total_tokens": 5}})
    assert cli.classify_table(["Will it rain?"], plain).splitlines() == ["INPUT          PREDICTION  SCORE", "Will it rain?  weather     0.912"]
    grouped = ClassificationResponse.model_validate({"data": [
        {"index": 0, "prediction": {"topic": "sport", "tone": "happy"}, "score": {"topic": 0.8, "tone": 0.6},
         "predictions": {"topic": [], "tone": []}, "out_of_scope": {"topic": False, "tone": True}, "oos_score": {"topic": -0.5, "tone": 3.25}},
    ], "usage": {"total_tokens": 5}})
    lines = cli.classify_table([{"image": "https://x/y.jpg"}], grouped).splitlines()
    assert lines[0].split() == ["INPUT", "GROUP", "PREDICTION", "SCORE", "OOS_SCORE", "OUT_OF_SCOPE"]
    assert lines[1].split() == ["[image]", "https://x/y.jpg", "topic", "sport", "0.800", "-0.500", "no"]
    assert lines[2].split() == ["[image]", "https://x/y.jpg", "tone", "happy", "0.600", "3.250", "yes"]


def test_embedding_previews():
    assert cli.preview_embedding([0.1, -0.2, 0.3, 0.4, 0.5]) == "[0.1000, -0.2000, 0.3000, 0.4000, …]"
    assert cli.embedding_dim([0.0] * 384) == "384" and cli.embedding_dim({"float": [0.0] * 8, "binary": [1]}) == "8/1"
    assert cli.preview_embedding({"base64": "AAAA"}) == "base64: AAAA"
    assert cli.embedding_dim("AAAAAAAAAAA=") == "2" and cli.embedding_dim("not base64!") == "-"


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
