"""The Python client and the CLI against the REAL service (no stand-ins): the session app of tests/conftest.py for
zero-shot, few-shot, listing, deletion, typed errors, the async client and the CLI as a subprocess; a second small
app with keys required and a tiny rate-limit tier for API keys and a real 429 retried after its Retry-After.
The pure parts and a scripted local server: the other tests of tests/classifier_client, which also run with the
client installed alone (scripts/test); these need the service, so they run in the main suite only."""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from itertools import pairwise

import httpx
import pytest
from ray import serve

from classifier_client import ApiError, AsyncClient, Client
from classifiers.accounts.keys import AccountStore
from classifiers.protocol.wire import ClassificationResponse, ClassifierSummary, DeleteResponse, TrainingResponse
from classifiers.storage.store import LocalDirStore
from serve_app.app import bind_app
from serve_app.config import load_config
from tests.conftest import ROOT

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
TEXTS = ["It will rain all day tomorrow.", "The striker scored a late winner."]
EXAMPLES = [
    ("It will rain all day tomorrow.", "weather"), ("Expect snow and freezing wind tonight.", "weather"),
    ("A sunny, hot afternoon is forecast.", "weather"), ("The striker scored a late winner.", "sport"),
    ("She won the tennis final in three sets.", "sport"), ("The team lost the derby at home.", "sport"),
]
COOKING = [{"text": "Simmer the sauce for twenty minutes.", "label": "cooking"},
           {"text": "Knead the dough and let it rise.", "label": "cooking"},
           {"text": "Fry the onions until golden.", "label": "cooking"}]


@pytest.fixture
def client(serve_url):
    with Client(serve_url, api_key="", timeout=120) as c:
        yield c


@pytest.fixture(autouse=True)
def cleanup(http):
    yield
    for c in http.get("/v1/classifiers").json():
        http.delete(f"/v1/classifiers/{c['classifier_id']}")


# -- zero-shot -----------------------------------------------------------------------------------------------------
def test_zero_shot_list_labels_typed_and_lossless(client):
    r = client.classify(TEXTS, labels=["weather", "sport", "cooking"], model=MODEL)
    assert isinstance(r, ClassificationResponse)
    assert [d.prediction for d in r.data] == ["weather", "sport"]
    for i, d in enumerate(r.data):
        assert d.index == i and [p.label for p in d.predictions] == ["weather", "sport", "cooking"]
        assert abs(sum(p.score for p in d.predictions) - 1) < 1e-5 and d.score == max(p.score for p in d.predictions)
        assert d.out_of_scope is None and d.oos_score is None
    assert r.usage.total_tokens > 0
    # the typed result holds exactly what the service sent (no extension fields appear without `abstain`)
    raw = client.last_response.json()
    assert r.model_dump(exclude_none=True) == raw and "out_of_scope" not in raw["data"][0]
    # one string input, and Jina's model name (an alias here)
    r = client.classify("Will it snow tonight?", labels=["weather", "sport"], model="jina-embeddings-v3")
    assert len(r.data) == 1 and r.data[0].prediction == "weather"


def test_zero_shot_label_groups_and_abstain(client):
    groups = {"topic": ["weather", "sport"], "tone": ["happy news", "sad news"]}
    r = client.classify(["The home team won the cup final, fans are celebrating!"], labels=groups, model=MODEL)
    (d,) = r.data
    assert set(d.prediction) == {"topic", "tone"} and d.prediction["topic"] == "sport"
    assert [p.label for p in d.predictions["tone"]] == groups["tone"]
    r = client.classify(TEXTS + ["Reset my router password"], labels=["weather", "sport"], model=MODEL,
                        abstain={"false_alarm_rate": 0.05})
    assert all(isinstance(d.out_of_scope, bool) and isinstance(d.oos_score, float) for d in r.data)
    assert [d.prediction for d in r.data[:2]] == ["weather", "sport"]


def test_models(client):
    cards = {m.id: m for m in client.models().data}  # ModelList: the typed cards the service sent
    assert {MODEL, "multilingual-e5-small", "jina-embeddings-v3"} <= set(cards)
    assert cards["jina-embeddings-v3"].alias_of == "multilingual-e5-small" and cards[MODEL].served_by is not None


# -- few-shot ------------------------------------------------------------------------------------------------------
def test_train_create_update_classify_list_delete(client):
    t = client.train(EXAMPLES, model=MODEL)
    assert isinstance(t, TrainingResponse) and t.num_samples == 6 and t.usage.total_tokens > 0
    cid = t.classifier_id
    u = client.train(COOKING, classifier_id=cid, num_iters=20)
    assert u.classifier_id == cid and u.num_samples == 3
    r = client.classify(["Heavy showers are expected this weekend.", "The goalkeeper saved a penalty.",
                         "Whisk the eggs with sugar and butter."], classifier_id=cid)
    assert [d.prediction for d in r.data] == ["weather", "sport", "cooking"]
    (s,) = [s for s in client.list() if s.classifier_id == cid]
    assert type(s) is ClassifierSummary
    assert (s.model, s.access, s.num_samples, s.updated_number) == (MODEL, "private", 9, 1)
    assert s.labels == ["weather", "sport", "cooking"]
    d = client.delete(cid)
    assert isinstance(d, DeleteResponse) and d.classifier_id == cid and d.deleted
    assert cid not in {s.classifier_id for s in client.list()}
    with pytest.raises(ApiError) as err:
        client.classify(["anything"], classifier_id=cid)
    assert (err.value.status, err.value.code) == (404, "RESOURCE_NOT_FOUND") and err.value.request_id


def test_declared_labels_extension(client):
    # `sport` is declared without examples (predicted from its name); the body carries `labels` only when given
    t = client.train([("Snow is falling all night.", "weather")], model=MODEL, labels=["weather", "sport"], access="public")
    assert json.loads(client.last_response.request.content)["labels"] == ["weather", "sport"]
    (s,) = [s for s in client.list() if s.classifier_id == t.classifier_id]
    assert s.labels == ["weather", "sport"] and s.num_samples == 1 and s.access == "public"
    r = client.classify(["Freezing rain tomorrow.", "The striker scored twice."], classifier_id=t.classifier_id)
    assert [d.prediction for d in r.data] == ["weather", "sport"]


def test_train_retry_with_the_same_idempotency_key_applies_once(client):
    first = client.train(EXAMPLES, model=MODEL, idempotency_key="client-test-create")
    again = client.train(EXAMPLES, model=MODEL, idempotency_key="client-test-create")
    assert again.model_dump() == first.model_dump()
    cid = first.classifier_id
    for _ in range(2):
        client.train(COOKING, classifier_id=cid, idempotency_key="client-test-update")
    (s,) = [s for s in client.list() if s.classifier_id == cid]
    assert s.num_samples == 9 and s.updated_number == 1
    # without a key of the caller's, each call gets its own: two creates are two classifiers
    ids = {client.train(EXAMPLES[:2] + EXAMPLES[3:5], model=MODEL).classifier_id for _ in range(2)}
    assert len(ids) == 2


# -- errors --------------------------------------------------------------------------------------------------------
def test_typed_api_errors(client):
    with pytest.raises(ApiError) as err:
        client.classify(["hello"], labels=["same", "same "], model=MODEL)  # collapse to one label
    e = err.value
    assert (e.status, e.code, e.retry_after) == (400, "INPUT_INVALID_LABELS", None) and e.request_id and e.detail
    assert str(e) == f"INPUT_INVALID_LABELS: {e.detail} (request_id {e.request_id})"
    with pytest.raises(ApiError) as err:
        client.classify(["hello"], labels=["a", "b"], model="no-such-model")
    assert err.value.code == "INPUT_MODEL_NOT_FOUND" and MODEL in err.value.detail
    with pytest.raises(ApiError) as err:
        client.classify(["hello"])  # neither labels nor classifier_id
    assert (err.value.status, err.value.code) == (400, "INPUT_INVALID")
    with pytest.raises(ApiError) as err:
        client.classify(["hello"], labels=["a", "b"], abstain={"false_alarm_rate": 0.05, "threshold": 2})
    assert (err.value.status, err.value.code) == (422, "INPUT_VALIDATION_FAILED") and err.value.errors
    with pytest.raises(ApiError) as err:
        client.delete("00000000-0000-4000-8000-00000000dead")
    assert (err.value.status, err.value.code) == (404, "RESOURCE_NOT_FOUND")
    assert client.request("GET", "/health") == {"status": "ok"}


def test_async_client(serve_url):
    async def go():
        async with AsyncClient(serve_url, api_key="", timeout=120) as c:
            results = await asyncio.gather(*(c.classify([t], labels=["weather", "sport"], model=MODEL) for t in TEXTS))
            t = await c.train(EXAMPLES, model=MODEL)
            listed = await c.list()
            few = await c.classify(["Freezing fog tonight."], classifier_id=t.classifier_id)
            deleted = await c.delete(t.classifier_id)
            with pytest.raises(ApiError) as err:
                await c.classify(["x"], labels=["a", "a"], model=MODEL)
            return results, t, listed, few, deleted, err.value, await c.models()

    results, t, listed, few, deleted, err, models = asyncio.run(go())
    assert [r.data[0].prediction for r in results] == ["weather", "sport"]
    assert t.classifier_id in {s.classifier_id for s in listed} and few.data[0].prediction == "weather"
    assert deleted.deleted and err.code == "INPUT_INVALID_LABELS" and MODEL in {m.id for m in models.data}


def test_embeddings(client, serve_url):
    r = client.embeddings(["hello world", {"text": "good morning"}], model=MODEL)
    assert r.model == MODEL and [d.index for d in r.data] == [0, 1] and r.usage.total_tokens > 0
    vec = r.data[0].embedding
    assert len(vec) == 384 and abs(sum(x * x for x in vec) - 1) < 1e-3
    b = client.embeddings("hello world", model=MODEL, embedding_type="base64")
    assert isinstance(b.data[0].embedding, str)
    assert "dimensions" not in json.loads(client.last_response.request.content)


# -- the CLI, as a subprocess -----------------------------------------------------------------------------------------
def run_cli(*args: str, stdin: str = "", env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("CLASSIFIER_API_KEY", "CLASSIFIER_URL")}
    return subprocess.run([sys.executable, "-m", "classifier_client", *args], input=stdin, capture_output=True, text=True,
                          cwd=ROOT, env={**base, **(env or {})}, timeout=180)


def test_cli_classify_table_json_and_stdin(serve_url):
    p = run_cli("--url", serve_url, "classify", *TEXTS, "--labels", "weather,sport", "--model", MODEL)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["INPUT", "PREDICTION", "SCORE"] and len(lines) == 3
    assert lines[1].startswith(TEXTS[0]) and lines[1].split()[-2] == "weather" and 0.5 < float(lines[1].split()[-1]) <= 1
    assert lines[2].split()[-2] == "sport"
    assert p.stderr.startswith("usage: ") and "tokens" in p.stderr

    p = run_cli("classify", *TEXTS, "--labels", "weather,sport", "--model", MODEL, "--url", serve_url, "--json")
    assert p.returncode == 0, p.stderr
    body = json.loads(p.stdout)
    assert [d["prediction"] for d in body["data"]] == ["weather", "sport"] and body["usage"]["total_tokens"] > 0

    # no --model: jina-embeddings-v3, Jina's name, served here as an alias of the embedded default
    p = run_cli("--url", serve_url, "classify", "--group", "topic=weather,sport", "--group", "tone=happy news,sad news",
                stdin="The home team won the cup final!\n\nIt will rain all day tomorrow.\n")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["INPUT", "GROUP", "PREDICTION", "SCORE"] and len(lines) == 5
    assert [ln.split()[-3:-1] for ln in lines[1:] if " topic " in ln] == [["topic", "sport"], ["topic", "weather"]]


def test_cli_train_list_classify_delete_and_errors(serve_url, tmp_path):
    csv_path = tmp_path / "examples.csv"
    csv_path.write_text("text,label\n" + "".join(f'"{t}",{lab}\n' for t, lab in EXAMPLES))
    p = run_cli("--url", serve_url, "--json", "train", str(csv_path), "--example", "Fry the onions until golden.=cooking",
                "--model", MODEL, "--num-iters", "10")
    assert p.returncode == 0, p.stderr
    created = json.loads(p.stdout)
    cid = created["classifier_id"]
    assert created["num_samples"] == 7

    p = run_cli("--url", serve_url, "train", "--classifier", cid, "--example", "Knead the dough and let it rise.=cooking")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].split() == ["CLASSIFIER_ID", "NUM_SAMPLES", "TOKENS"] and p.stdout.splitlines()[1].split()[:2] == [cid, "1"]

    p = run_cli("--url", serve_url, "list")
    assert p.returncode == 0, p.stderr
    (row,) = [ln for ln in p.stdout.splitlines() if ln.startswith(cid)]
    assert row.split()[1:4] == [MODEL, "private", "8"] and "weather, sport, cooking" in row
    listed = json.loads(run_cli("--url", serve_url, "list", "--json").stdout)
    assert cid in {c["classifier_id"] for c in listed}

    p = run_cli("--url", serve_url, "classify", "--classifier", cid, "Thunderstorms tonight.", "Bake the cake at 180 degrees.")
    assert p.returncode == 0, p.stderr
    assert [ln.split()[-2] for ln in p.stdout.splitlines()[1:]] == ["weather", "cooking"]

    p = run_cli("--url", serve_url, "delete", cid)
    assert (p.returncode, p.stdout.strip()) == (0, f"deleted {cid}")
    p = run_cli("--url", serve_url, "delete", cid)
    assert p.returncode == 1 and p.stdout == ""
    assert p.stderr.startswith("RESOURCE_NOT_FOUND: ") and "(request_id " in p.stderr
    p = run_cli("--url", serve_url, "--json", "classify", "x", "--labels", "a,a", "--model", MODEL)
    assert p.returncode == 1 and json.loads(p.stdout)["code"] == "INPUT_INVALID_LABELS"
    assert p.stderr.startswith("INPUT_INVALID_LABELS: ")


def test_cli_models_and_embed(serve_url):
    p = run_cli("--url", serve_url, "models")
    assert p.returncode == 0, p.stderr
    rows = {ln.split()[0]: ln.split() for ln in p.stdout.splitlines()[1:]}
    assert rows["jina-embeddings-v3"][1] == "multilingual-e5-small" and rows[MODEL][3] == "384"
    p = run_cli("--url", serve_url, "embed", "hello world", "--model", MODEL)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[1].split()[:4] == ["0", "hello", "world", "384"]


# -- keys and a real 429 (a second app: keys required, a tiny zero-shot tier) --------------------------------------
BIG = {"rpm": 100_000, "tpm": 100_000_000}


@pytest.fixture(scope="module")
def keyed(serve_url, tmp_path_factory):
    """(base url, AccountStore) of an app with keys required; tier `tiny` allows 20 zero-shot requests a minute."""
    store_dir = tmp_path_factory.mktemp("client-keys-store")
    cfg = load_config({
        "app_name": "client-keys-test",
        "models": [MODEL],
        "state": {"store_url": str(store_dir), "num_shards": 1},
        "ingress": {"ray_actor_options": {"num_cpus": 0.05}},
        "embedder": {"ray_actor_options": {"num_cpus": 0.1}},
        "accounts": {"require_keys": True, "key_cache_ttl_s": 1.0, "tiers": {
            "default": {"zeroshot": BIG, "fewshot": BIG, "train": BIG},
            "tiny": {"zeroshot": {"rpm": 20, "tpm": 1_000_000}, "fewshot": BIG, "train": BIG},
        }},
    }, env={})
    serve.run(bind_app(cfg), name=cfg.app_name, route_prefix="/clientkeys")
    yield f"{serve_url}/clientkeys", AccountStore(LocalDirStore(store_dir))
    serve.delete(cfg.app_name)


def test_api_key_from_argument_environment_and_cli(keyed, monkeypatch):
    url, store = keyed
    _, key = store.create_key("client-test")
    with Client(url, api_key=key) as c:
        assert c.classify(["Rain again."], labels=["weather", "sport"], model=MODEL).data[0].prediction == "weather"
        assert c.list() == []
    with Client(url, api_key="") as c, pytest.raises(ApiError) as err:
        c.list()
    assert (err.value.status, err.value.code) == (401, "AUTH_MISSING_API_KEY")
    with Client(url, api_key="rck_000000000000_" + "A" * 43) as c, pytest.raises(ApiError) as err:
        c.list()
    assert err.value.code == "AUTH_INVALID_API_KEY" and "AAAA" not in str(err.value)
    monkeypatch.setenv("CLASSIFIER_API_KEY", key)
    with Client(url) as c:
        assert c.train(EXAMPLES, model=MODEL, access="private").num_samples == 6
    p = run_cli("--url", url, "list", env={"CLASSIFIER_API_KEY": key})
    assert p.returncode == 0 and len(p.stdout.splitlines()) == 2, p.stderr
    p = run_cli("list", "--url", url, "--api-key", key, "--json")
    assert p.returncode == 0 and len(json.loads(p.stdout)) == 1, p.stderr
    p = run_cli("--url", url, "list")
    assert p.returncode == 1 and p.stderr.startswith("AUTH_MISSING_API_KEY: ")


def test_real_429_is_retried_after_retry_after(keyed):
    url, store = keyed
    _, key = store.create_key("tiny-client", tier="tiny")
    body = dict(inputs=["Will it rain?"], labels=["weather", "sport"], model=MODEL)
    with Client(url, api_key=key, max_retries=0) as c:  # no retries: spend the budget until the service refuses
        for _ in range(60):
            try:
                c.classify(**body)
            except ApiError as e:
                refused = e
                break
        else:
            pytest.fail("no 429 within 60 requests at 20 requests per minute")
    assert (refused.status, refused.code) == (429, "RATE_REQUEST_LIMIT_EXCEEDED")
    assert refused.retry_after is not None and 1 <= refused.retry_after <= 10 and refused.request_id

    seen: list[tuple[int, float, str | None]] = []
    hook = lambda r: seen.append((r.status_code, time.monotonic(), r.headers.get("retry-after")))  # noqa: E731

    # a Retry-After over max_retry_wait (the service says at least 1 s) is not waited for: the 429 comes back at once
    with httpx.Client(timeout=60, event_hooks={"response": [hook]}) as http, \
            Client(url, api_key=key, http_client=http, max_retries=3, max_retry_wait=0.5) as c:
        for _ in range(20):
            seen.clear()
            t0 = time.monotonic()
            try:
                c.classify(**body)
            except ApiError as e:
                assert e.status == 429 and time.monotonic() - t0 < 1.0 and len(seen) == 1, seen
                break
        else:
            pytest.fail("no 429 within 20 requests")

    # with room to wait, every call succeeds; the refused attempts are retried no sooner than Retry-After said
    history = []
    with httpx.Client(timeout=60, event_hooks={"response": [hook]}) as http, \
            Client(url, api_key=key, http_client=http, max_retries=5, max_retry_wait=15) as c:
        for _ in range(5):
            seen.clear()
            assert c.classify(**body).data[0].prediction == "weather"
            history.append(list(seen))
            if len(seen) > 1:
                break
    assert any(len(h) > 1 for h in history), history  # at least one call met a 429 and was retried
    for h in history:
        assert h[-1][0] == 200 and all(status == 429 for status, _, _ in h[:-1]), h
        for (_, t, retry_after), (_, t_next, _) in pairwise(h):
            assert t_next - t >= float(retry_after) - 0.05, h
