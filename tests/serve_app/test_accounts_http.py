"""Accounts over HTTP: a second app with --require-keys, 2 ingress replicas and small limits, on the real Serve.

Every rule of the accounts issue is exercised here by two (or more) real keys: 401 codes, ownership of private
and public classifiers on classify/train/delete/list, usage equal to the tokenizer's counts and the ledger,
balances, idempotent training, cancelled creates, rate limits across replicas, admin-only stats, handle callers.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.fewshot.record import ClassifierRecord
from classifiers.storage.store import LocalDirStore, owner_key
from serve_app.app import bind_app
from serve_app.config import load_config
from tests.conftest import ROOT
from tests.serve_app.test_jina_spec import check, load_spec

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
PREFIX = "/acct"
APP = "accounts-test"
EXAMPLES = [
    {"text": "It will rain all day tomorrow.", "label": "weather"},
    {"text": "Expect snow and freezing wind tonight.", "label": "weather"},
    {"text": "The striker scored a late winner.", "label": "sport"},
    {"text": "She won the tennis final in three sets.", "label": "sport"},
]
BIG = {"rpm": 100_000, "tpm": 100_000_000}


@pytest.fixture(scope="module")
def acct(serve_url, tmp_path_factory):
    """The accounts app; yields (base url, store, config)."""
    store_dir = tmp_path_factory.mktemp("accounts-store")
    cfg = load_config({
        "app_name": APP,
        "models": [MODEL],
        "state": {"store_url": str(store_dir), "num_shards": 2},
        "limits": {"max_classifiers_per_owner": 2},
        "ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.05}},
        "accounts": {
            "require_keys": True,
            "usage_flush_s": 0.2,
            "ledger_flush_s": 0.3,
            "key_cache_ttl_s": 1.0,
            "tiers": {
                "default": {"zeroshot": BIG, "fewshot": BIG, "train": BIG},
                "tiny": {"zeroshot": {"rpm": 10, "tpm": 100_000}, "fewshot": BIG, "train": BIG},
                "few-tokens": {"zeroshot": {"rpm": 1000, "tpm": 40}, "fewshot": BIG, "train": BIG},
            },
        },
    }, env={})
    serve.run(bind_app(cfg), name=APP, route_prefix=PREFIX)
    yield f"{serve_url}{PREFIX}", AccountStore(LocalDirStore(store_dir)), cfg
    serve.delete(APP)


@pytest.fixture(scope="module")
def client(acct):
    with httpx.Client(base_url=acct[0], timeout=120) as c:
        yield c


def new_key(acct, name, **kw):
    rec, key = acct[1].create_key(name, **kw)
    return rec, {"Authorization": f"Bearer {key}"}


def ledger_tokens(acct, key_id) -> int:
    """The durable ledger, after the replicas and the ledger actor have flushed."""
    time.sleep(0.6)  # > usage_flush_s: both replicas have sent their pending usage
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["name"].startswith("accounts-"):
            ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).flush.remote())
    entry = acct[1].read_ledger(key_id)
    return entry["tokens"] if entry else 0


def test_401s_with_jinas_codes_and_open_health_and_docs(client):
    body = {"model": MODEL, "input": ["hello"], "labels": ["a", "b"]}
    cases = [
        ({}, "AUTH_MISSING_API_KEY"), ({"Authorization": "Bearer"}, "AUTH_MISSING_API_KEY"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "AUTH_INVALID_FORMAT"),
        ({"Authorization": "Bearer rck_000000000000_" + "A" * 43}, "AUTH_INVALID_API_KEY"),
        ({"Authorization": "Bearer sk-something-else"}, "AUTH_INVALID_API_KEY"),
    ]
    spec = load_spec()
    for headers, code in cases:
        for method, path, kw in (("POST", "/v1/classify", {"json": body}), ("GET", "/v1/classifiers", {}),
                                 ("POST", "/v1/train", {"json": {"model": MODEL, "input": EXAMPLES}}),
                                 ("DELETE", "/v1/classifiers/abc", {}), ("GET", "/v1/models", {}), ("GET", "/v1/stats", {})):
            r = client.request(method, path, headers=headers, **kw)
            assert r.status_code == 401, (method, path, r.text)
            assert r.json()["code"] == code and r.json()["request_id"], r.text
            assert "rck_000000000000" not in r.text
            if path in ("/v1/classify", "/v1/train", "/v1/classifiers"):
                check(spec, r, path, method.lower())
    for path in ("/health", "/live", "/ready", "/docs", "/openapi.json"):
        assert client.get(path).status_code == 200, path


def test_ownership_private_public_and_lists(acct, client):
    rec_a, a = new_key(acct, "alice")
    rec_b, b = new_key(acct, "bob")
    r = client.post("/v1/train", headers=a, json={"model": MODEL, "access": "private", "input": EXAMPLES})
    assert r.status_code == 200, r.text
    private = r.json()["classifier_id"]
    public = client.post("/v1/train", headers=a, json={"model": MODEL, "access": "public", "input": EXAMPLES}).json()["classifier_id"]
    q = {"input": ["Heavy rain is coming."]}
    # private: every other account gets 404, exactly as for an id that does not exist
    for method, path, kw in (("POST", "/v1/classify", {"json": {**q, "classifier_id": private}}),
                             ("POST", "/v1/train", {"json": {"classifier_id": private, "input": EXAMPLES[:1]}}),
                             ("DELETE", f"/v1/classifiers/{private}", {})):
        r = client.request(method, path, headers=b, **kw)
        assert r.status_code == 404 and r.json()["code"] == "RESOURCE_NOT_FOUND", r.text
    # public: anyone classifies (charged to themselves); nobody else trains, deletes or lists it
    before = ledger_tokens(acct, rec_b.key_id)
    r = client.post("/v1/classify", headers=b, json={**q, "classifier_id": public})
    assert r.status_code == 200 and r.json()["data"][0]["prediction"] == "weather", r.text
    assert ledger_tokens(acct, rec_b.key_id) == before + r.json()["usage"]["total_tokens"]
    assert client.post("/v1/train", headers=b, json={"classifier_id": public, "input": EXAMPLES[:1]}).status_code == 404
    assert client.delete(f"/v1/classifiers/{public}", headers=b).status_code == 404
    lists = {who: {c["classifier_id"]: c for c in client.get("/v1/classifiers", headers=h).json()} for who, h in (("a", a), ("b", b))}
    assert set(lists["a"]) == {private, public} and lists["b"] == {}
    assert {c["user_id"] for c in lists["a"].values()} == {rec_a.account_id}
    # the owner still can do everything
    assert client.post("/v1/train", headers=a, json={"classifier_id": private, "input": EXAMPLES[:1]}).status_code == 200
    for cid in (private, public):
        assert client.delete(f"/v1/classifiers/{cid}", headers=a).status_code == 200


def test_usage_is_the_tokenizers_count_and_only_successes_are_charged(acct, client):
    from classifiers.embedding.engines import load_encoder

    spec = acct[2].registry().get(MODEL)
    enc = load_encoder(spec, num_threads=1)
    rec, h = new_key(acct, "counted")
    texts = ["Will it snow in Oslo this weekend?", "The final whistle blew after extra time."]
    labels = ["weather", "sport", "cooking"]
    in_tokens = sum(enc.count_tokens(texts, "input"))
    label_tokens = sum(enc.count_tokens([spec.label_texts(lab)[0] for lab in labels], "label"))
    r = client.post("/v1/classify", headers=h, json={"model": MODEL, "input": texts, "labels": labels})
    assert r.json()["usage"]["total_tokens"] == in_tokens + label_tokens
    train_tokens = sum(enc.count_tokens([e["text"] for e in EXAMPLES], "input"))
    r = client.post("/v1/train", headers=h, json={"model": MODEL, "input": EXAMPLES, "num_iters": 3})
    assert r.json()["usage"]["total_tokens"] == train_tokens * 3, r.text
    cid = r.json()["classifier_id"]
    r = client.post("/v1/classify", headers=h, json={"classifier_id": cid, "input": texts})
    assert r.json()["usage"]["total_tokens"] == in_tokens
    expected = in_tokens + label_tokens + train_tokens * 3 + in_tokens
    assert ledger_tokens(acct, rec.key_id) == expected
    mine = client.get("/v1/usage", headers=h).json()  # the caller's own view, from any replica
    assert (mine["key_id"], mine["account_id"], mine["tokens"], mine["requests"]) == (rec.key_id, rec.account_id, expected, 3)
    assert mine["by_mode"]["train"] == {"tokens": train_tokens * 3, "requests": 1}
    # failed requests of every kind leave the ledger as it was
    for body in ({"model": MODEL, "input": texts, "labels": ["x", "x"]}, {"model": "nope", "input": texts, "labels": labels},
                 {"classifier_id": "00000000-0000-4000-8000-000000000009", "input": texts}):
        assert client.post("/v1/classify", headers=h, json=body).status_code in (400, 404)
    assert client.post("/v1/train", headers=h, json={"classifier_id": cid, "input": [{"text": "", "label": "a"}]}).status_code == 400
    assert ledger_tokens(acct, rec.key_id) == expected
    assert client.delete(f"/v1/classifiers/{cid}", headers=h).status_code == 200


def test_a_failing_ledger_store_never_fails_a_request(acct, client):
    rec, h = new_key(acct, "ledger-down")
    root = Path(acct[2].state.store_url)
    (root / "accounts" / "ledger").rename(root / "accounts" / "ledger-away")
    (root / "accounts" / "ledger").write_bytes(b"")  # a file where the ledger's folder is: every ledger write fails
    try:
        usage = 0
        for i in range(3):
            r = client.post("/v1/classify", headers=h, json={"model": MODEL, "input": [f"text {i}"], "labels": ["a", "b"]})
            assert r.status_code == 200, r.text
            usage += r.json()["usage"]["total_tokens"]
        r = client.post("/v1/train", headers=h, json={"model": MODEL, "input": EXAMPLES})
        assert r.status_code == 200, r.text
        usage += r.json()["usage"]["total_tokens"]
        time.sleep(1.0)  # several failed persists
    finally:
        (root / "accounts" / "ledger").unlink()
        (root / "accounts" / "ledger-away").rename(root / "accounts" / "ledger")
    assert ledger_tokens(acct, rec.key_id) == usage  # nothing lost once the store is back
    assert client.delete(f"/v1/classifiers/{r.json()['classifier_id']}", headers=h).status_code == 200


def test_balance_refuses_before_work_once_spent(acct, client):
    """A request is admitted only if its counted tokens fit what is left of the balance: the second of these
    requests (23 tokens each, 30 in the balance) is refused before any model work, naming its count. With two
    ingress replicas, the other one sees the spend once it is flushed: at most one request more gets through."""
    _, h = new_key(acct, "prepaid", balance=30)
    body = {"model": MODEL, "input": ["A long enough sentence to spend a fair number of tokens at once."], "labels": ["a", "b"]}
    r = client.post("/v1/classify", headers=h, json=body)
    cost = r.json()["usage"]["total_tokens"]
    assert r.status_code == 200 and 15 < cost <= 30
    deadline = time.time() + 10
    while time.time() < deadline:  # the other replica sees the spend after a flush
        r = client.post("/v1/classify", headers=h, json=body)
        if r.status_code == 403:
            break
    assert r.status_code == 403 and r.json()["code"] == "AUTHZ_INSUFFICIENT_BALANCE", r.text
    assert f"at least {cost} tokens" in r.json()["detail"]
    from classifier_client import Client

    with Client(acct[0], api_key=h["Authorization"].split()[1]) as c:
        deadline = time.time() + 5
        u = c.usage()
        while u.tokens < cost and time.time() < deadline:  # the other replica sees the spend once it is flushed
            time.sleep(0.2)
            u = c.usage()
    assert u.balance == 30 and u.tokens in (cost, 2 * cost) and u.balance_left == 30 - u.tokens


def test_idempotency_key_applies_a_retried_update_once(acct, client):
    _, h = new_key(acct, "retrier")
    first = client.post("/v1/train", headers={**h, "Idempotency-Key": "create-1"}, json={"model": MODEL, "input": EXAMPLES})
    again = client.post("/v1/train", headers={**h, "Idempotency-Key": "create-1"}, json={"model": MODEL, "input": EXAMPLES})
    assert first.status_code == again.status_code == 200 and first.json() == again.json()
    cid = first.json()["classifier_id"]
    update = {"classifier_id": cid, "input": [{"text": "Sleet and hail by evening.", "label": "weather"}]}
    r1 = client.post("/v1/train", headers={**h, "Idempotency-Key": "upd-1"}, json=update)
    r2 = client.post("/v1/train", headers={**h, "Idempotency-Key": "upd-1"}, json=update)
    assert r1.json() == r2.json() and r1.status_code == 200
    # X-Request-ID is a tracing id, never a retry key: both are applied (and echoed)
    r3 = client.post("/v1/train", headers={**h, "X-Request-ID": "client-rid-7"}, json=update)
    r4 = client.post("/v1/train", headers={**h, "X-Request-ID": "client-rid-7"}, json=update)
    assert r3.status_code == r4.status_code == 200 and r3.headers["x-request-id"] == r4.headers["x-request-id"] == "client-rid-7"
    (listed,) = client.get("/v1/classifiers", headers=h).json()
    assert listed["classifier_id"] == cid and listed["num_samples"] == len(EXAMPLES) + 3 and listed["updated_number"] == 3
    assert client.delete(f"/v1/classifiers/{cid}", headers=h).status_code == 200


def stored_for(acct, account_id) -> tuple[set, set]:
    root = Path(acct[2].state.store_url)
    stored = set()
    for f in (root / "classifiers").glob("*.npz"):
        rec = ClassifierRecord.from_bytes(f.read_bytes())
        if rec.owner == account_id:
            stored.add(rec.classifier_id)
    markers = {p.name for p in (root / "owners" / owner_key(account_id)).glob("*")} if (root / "owners" / owner_key(account_id)).exists() else set()
    return stored, markers


def test_cancelled_creates_leave_count_and_store_in_agreement(acct, client):
    rec, h = new_key(acct, "impatient")
    def create_and_hang_up(i):
        try:
            with httpx.Client(base_url=acct[0], timeout=0.3 + 0.1 * i) as c:
                c.post("/v1/train", headers=h, json={"model": MODEL, "input": EXAMPLES})
        except httpx.TimeoutException:
            pass
    with ThreadPoolExecutor(5) as pool:
        list(pool.map(create_and_hang_up, range(5)))
    time.sleep(3)  # creates that reached the state shard finish (shielded); the rest never started
    listed = {c["classifier_id"] for c in client.get("/v1/classifiers", headers=h).json()}
    stored, markers = stored_for(acct, rec.account_id)
    assert listed == stored == markers and len(listed) <= 2
    for cid in listed:
        assert client.delete(f"/v1/classifiers/{cid}", headers=h).status_code == 200
    r = client.post("/v1/train", headers=h, json={"model": MODEL, "input": EXAMPLES})
    assert r.status_code == 200, r.text
    assert client.delete(f"/v1/classifiers/{r.json()['classifier_id']}", headers=h).status_code == 200


def test_the_per_account_limit_is_per_account(acct, client):
    _, a = new_key(acct, "filler")
    _, b = new_key(acct, "other")
    made = [client.post("/v1/train", headers=a, json={"model": MODEL, "input": EXAMPLES}) for _ in range(3)]
    assert [r.status_code for r in made] == [200, 200, 403] and made[2].json()["code"] == "AUTHZ_RESOURCE_LIMIT_EXCEEDED"
    r = client.post("/v1/train", headers=b, json={"model": MODEL, "input": EXAMPLES})
    assert r.status_code == 200
    for h, resp in ((a, made[0]), (a, made[1]), (b, r)):
        assert client.delete(f"/v1/classifiers/{resp.json()['classifier_id']}", headers=h).status_code == 200


def test_rpm_holds_across_two_ingress_replicas(acct, client):
    _, h = new_key(acct, "bursty", tier="tiny")  # zero-shot: 10 requests per minute
    body = {"model": MODEL, "input": ["hi"], "labels": ["a", "b"]}
    started = time.time()
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: client.post("/v1/classify", headers=h, json=body), range(40)))
    elapsed = time.time() - started
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) + len(refused) == 40
    assert 10 <= len(ok) <= 10 + int(elapsed * 10 / 60) + 1, (len(ok), elapsed)  # the bucket + its refill (+1 tolerance)
    spec = load_spec()
    for r in refused:
        check(spec, r, "/v1/classify")
        assert r.json()["code"] == "RATE_REQUEST_LIMIT_EXCEEDED" and r.json()["request_id"]
        assert int(r.headers["Retry-After"]) >= 1
    for r in responses:
        assert "X-RateLimit-Remaining-Requests" in r.headers and "X-RateLimit-Remaining-Tokens" in r.headers
    assert min(int(r.headers["X-RateLimit-Remaining-Requests"]) for r in ok) <= 1
    from tests.serve_app.test_metrics import REFUSALS, scrape_until

    assert scrape_until([REFUSALS]) == []  # the refusals are counted in Prometheus too


def test_a_request_over_the_tpm_is_refused_whole(acct, client):
    """Counted past the tokens per minute, a request is refused whole, before any model work; what was counted
    used the minute's budget (counting is work: a client cannot make the service count for free), settled with the
    accounts actor at once, so the key's next request is refused on either ingress replica, with a Retry-After that
    covers the debt."""
    _, h = new_key(acct, "small-tpm", tier="few-tokens")  # 40 tokens per minute: 0.67 per second
    r = client.post("/v1/classify", headers=h, json={"model": MODEL, "input": ["word " * 60], "labels": ["a", "b"]})
    assert r.status_code == 429 and r.json()["code"] == "RATE_TOKEN_LIMIT_EXCEEDED", r.text
    counted = int(r.json()["detail"].split("at least ")[1].split()[0])
    assert "split" in r.json()["detail"] and counted > 40
    short = {"model": MODEL, "input": ["short"], "labels": ["a", "b"]}
    for _ in range(4):  # both replicas
        r = client.post("/v1/classify", headers=h, json=short)
        assert r.status_code == 429, r.text
        assert (counted - 40) * 60 / 40 - 2 <= int(r.headers["Retry-After"]) <= 61, r.headers


def test_stats_need_an_admin_key(acct, client):
    _, user = new_key(acct, "user")
    _, admin = new_key(acct, "ops", admin=True)
    r = client.get("/v1/stats", headers=user)
    assert r.status_code == 403 and r.json()["code"] == "AUTHZ_INSUFFICIENT_PERMISSIONS"
    assert client.get("/v1/stats", headers=admin).status_code == 200


def test_keys_cli_creates_and_revokes_keys_a_running_service_honours(acct, client):
    env = {**os.environ, "CLASSIFIER__STATE__STORE_URL": acct[2].state.store_url}
    run = lambda *args: subprocess.run([sys.executable, "-m", "serve_app.keys", *args], cwd=ROOT, env=env,  # noqa: E731
                                       capture_output=True, text=True, timeout=120, check=True)
    out = run("create", "--name", "cli-made")
    key = out.stdout.strip().splitlines()[-1]
    assert key.startswith("rck_") and key not in out.stderr
    h = {"Authorization": f"Bearer {key}"}
    body = {"model": MODEL, "input": ["hello"], "labels": ["a", "b"]}
    assert client.post("/v1/classify", headers=h, json=body).status_code == 200  # no restart needed
    key_id = key.split("_")[1]
    listing = run("list").stdout
    assert key_id in listing and key not in listing
    run("revoke", key_id)
    time.sleep(acct[2].accounts.key_cache_ttl_s + 0.1)  # every replica has re-read the key since
    for _ in range(6):  # (both replicas)
        r = client.post("/v1/classify", headers=h, json=body)
        assert r.status_code == 401 and r.json()["code"] == "AUTH_INVALID_API_KEY", r.text
    usage = json.loads(run("usage", key_id).stdout.strip().splitlines()[-1])
    assert usage["subject"] == key_id


def test_handle_callers_say_who_they_are(acct):
    from classifiers.protocol.errors import MissingApiKey
    from classifiers.protocol.wire import ClassifyRequest

    rec, h = new_key(acct, "py")
    handle = serve.get_app_handle(APP)
    req = ClassifyRequest(model=MODEL, input=["Bake the bread for forty minutes."], labels=["weather", "cooking"])
    with pytest.raises(MissingApiKey):
        handle.classify.remote(req).result(timeout_s=60)
    key = h["Authorization"].split()[1]
    assert handle.classify.remote(req, api_key=key).result(timeout_s=60).data[0].prediction == "cooking"
    assert handle.classify.remote(req, account_id=rec.account_id).result(timeout_s=60).data[0].prediction == "cooking"
    assert handle.list_classifiers.remote(api_key=key).result(timeout_s=60) == []


def test_a_ledger_answer_lost_mid_flush_is_resent_and_counted_once(serve_url, tmp_path_factory):
    """The ledger applies a flush whose answer never reaches the replica: the accounts actor's process is frozen
    (SIGSTOP, as a long GC pause or an overloaded node would), so the replica's send times out
    (``RemoteAccounts.CALL_TIMEOUT_S``) and is sent again next round, while the first send waits in the actor's
    queue. Thawed, the actor runs both: the totals must equal the responses' ``usage`` exactly, not twice."""
    import os
    import signal

    from deployments.accounts_actor import RemoteAccounts
    from deployments.classifier_shards import NAMESPACE, store_digest
    from tests.reliability.helpers import deploy_variant

    app = "ledger-lost-answer"
    store = str(tmp_path_factory.mktemp("ledger-lost-answer"))
    # rate limits off: while the actor is frozen, requests need nothing from it (no leases), so they all succeed
    deploy_variant(app, store, accounts={"rate_limits": False, "usage_flush_s": 0.3, "ledger_flush_s": 0.3})
    ledger = AccountStore(LocalDirStore(store))
    try:
        with httpx.Client(base_url=f"{serve_url}/{app}", timeout=120) as c:
            r = c.post("/v1/train", json={"model": MODEL, "input": EXAMPLES})
            assert r.status_code == 200, r.text
            cid, charged, served = r.json()["classifier_id"], r.json()["usage"]["total_tokens"], 1
            actor = ray.get_actor(f"accounts-{store_digest(store)}", namespace=NAMESPACE)
            deadline = time.time() + 20
            while (ledger.read_ledger("anonymous") or {}).get("tokens") != charged and time.time() < deadline:
                time.sleep(0.2)  # the replica has flushed to the actor, and the actor to the store
            pid = ray.get(actor.__ray_call__.remote(lambda self: os.getpid()))
            os.kill(pid, signal.SIGSTOP)
            try:
                for i in range(4):
                    r = c.post("/v1/classify", json={"model": MODEL, "input": [f"Is it raining in town {i}?"], "labels": ["weather", "sport"]})
                    assert r.status_code == 200, r.text
                    charged, served = charged + r.json()["usage"]["total_tokens"], served + 1
                r = c.post("/v1/train", json={"classifier_id": cid, "input": [{"text": "Hail by the evening.", "label": "weather"}]})
                assert r.status_code == 200, r.text
                charged, served = charged + r.json()["usage"]["total_tokens"], served + 1
                time.sleep(RemoteAccounts.CALL_TIMEOUT_S + 2.5)  # one send timed out, its resend is queued behind it
            finally:
                os.kill(pid, signal.SIGCONT)
            deadline = time.time() + 30
            while (ledger.read_ledger("anonymous") or {}).get("tokens", 0) < charged and time.time() < deadline:
                time.sleep(0.3)
            time.sleep(2.0)  # any duplicate would land by now
            ray.get(actor.flush.remote())
            entry = ledger.read_ledger("anonymous")
            assert (entry["tokens"], entry["requests"]) == (charged, served), entry
            assert entry["by_mode"]["zeroshot"]["requests"] == 4 and entry["by_mode"]["train"]["requests"] == 2
    finally:
        serve.delete(app)
