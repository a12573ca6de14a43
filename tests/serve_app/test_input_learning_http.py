"""Learning from classified inputs (`learn_from_inputs`, ours, issue 29) over HTTP on the real app, with real keys.

A classifier with it on learns, without labels, from the inputs its owner classifies with it, after each answer;
another account's traffic on a public classifier never changes it; turning it off stops learning and keeps what
was learned; a restart of the state shards keeps the adapted state; concurrent classify and train lose no
acknowledged train; bad values are Jina 4xx bodies that change nothing.
"""
from __future__ import annotations

import csv
import threading
import time

import httpx
import numpy as np
import pytest
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import LocalDirStore
from serve_app.app import bind_app
from serve_app.config import load_config
from tests.conftest import ROOT
from tests.serve_app.test_fewshot_http import kill_shards
from tests.serve_app.test_jina_spec import check, load_spec

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
PREFIX = "/learn"
APP = "input-learning-test"
CHUNK = 16
BIG = {"rpm": 100_000, "tpm": 100_000_000}


def stream() -> tuple[list[str], list[str]]:
    """165 CLINC150 utterances of five intents (tests/data/SOURCE.md), in a fixed shuffled order."""
    with open(ROOT / "tests" / "data" / "clinc_utility5.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    order = np.random.default_rng(0).permutation(len(rows))
    return [rows[i]["text"] for i in order], [rows[i]["label"] for i in order]


TEXTS, TRUTH = stream()
LABELS = sorted(set(TRUTH))
PROBE = TEXTS[:40]  # classified by another account: it reads the classifier without changing it


@pytest.fixture(scope="module")
def app(serve_url, tmp_path_factory):
    store_dir = tmp_path_factory.mktemp("learning-store")
    cfg = load_config({
        "app_name": APP,
        "models": [MODEL],
        "state": {"store_url": str(store_dir), "num_shards": 2,
                  "learning": {"chunk_inputs": CHUNK, "max_wait_s": 0.3}},
        "accounts": {"require_keys": True, "tiers": {"default": {"zeroshot": BIG, "fewshot": BIG, "train": BIG}}},
    }, env={})
    serve.run(bind_app(cfg), name=APP, route_prefix=PREFIX)
    keys = AccountStore(LocalDirStore(store_dir))
    with httpx.Client(base_url=f"{serve_url}{PREFIX}", timeout=120) as client:
        yield client, keys
    serve.delete(APP)


def key(app, name: str) -> dict:
    _, text = app[1].create_key(name)
    return {"Authorization": f"Bearer {text}"}


@pytest.fixture(scope="module")
def owner(app):
    return key(app, "owner")


@pytest.fixture(scope="module")
def other(app):
    return key(app, "other")


def post(app, path: str, headers: dict, body: dict, status: int = 200) -> dict:
    r = app[0].post(path, headers=headers, json=body)
    assert r.status_code == status, r.text
    return r.json()


def create(app, owner, **extra) -> str:
    body = {"model": MODEL, "access": "public", "input": [], "labels": LABELS, **extra}
    return post(app, "/v1/train", owner, body)["classifier_id"]


def summary(app, owner, cid: str) -> dict:
    (s,) = [c for c in app[0].get("/v1/classifiers", headers=owner).json() if c["classifier_id"] == cid]
    return s


def probs(app, headers, cid: str, texts=PROBE) -> np.ndarray:
    data = post(app, "/v1/classify", headers, {"classifier_id": cid, "input": texts})["data"]
    return np.array([[p["score"] for p in sorted(d["predictions"], key=lambda p: p["label"])] for d in data])


def feed(app, owner, cid: str, texts: list[str], batch: int = 20) -> None:
    for i in range(0, len(texts), batch):
        post(app, "/v1/classify", owner, {"classifier_id": cid, "input": texts[i : i + batch]})


def settled(app, owner, cid: str, expect: int, timeout: float = 60.0) -> dict:
    """The listing once `inputs_learned` reached `expect` (learning runs after the answers, in chunks)."""
    deadline = time.monotonic() + timeout
    while True:
        s = summary(app, owner, cid)
        if s["inputs_learned"] >= expect or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def test_the_owners_inputs_teach_it_and_anothers_do_not(app, owner, other):
    learning, plain = create(app, owner, learn_from_inputs=True), create(app, owner)
    s = summary(app, owner, learning)
    assert (s["learn_from_inputs"], s["inputs_learned"]) == (True, 0)
    assert summary(app, owner, plain)["learn_from_inputs"] is False
    check(load_spec(), app[0].get("/v1/classifiers", headers=owner), "/v1/classifiers", "get")
    r = app[0].post("/v1/train", headers=owner, json={"classifier_id": plain, "input": [], "learn_from_inputs": False})
    check(load_spec(), r, "/v1/train")
    # before it learned anything, both answer exactly alike: an answer never depends on its own request's inputs
    start = probs(app, other, learning)
    np.testing.assert_array_equal(start, probs(app, other, plain))
    feed(app, other, learning, TEXTS)  # a public classifier: another account's traffic is not the owner's to learn
    time.sleep(1.0)  # > max_wait_s: anything that would be learned has been
    assert summary(app, owner, learning)["inputs_learned"] == 0
    np.testing.assert_array_equal(probs(app, other, learning), start)
    feed(app, owner, learning, TEXTS)
    s = settled(app, owner, learning, len(TEXTS))
    assert s["inputs_learned"] == len(TEXTS) and s["num_samples"] == 0  # unlabeled inputs are not examples
    after = probs(app, other, learning)
    assert not np.allclose(after, start, atol=1e-4)  # its state changed
    np.testing.assert_allclose(after.sum(1), 1.0, atol=1e-5)
    feed(app, owner, plain, TEXTS)
    time.sleep(1.0)
    assert summary(app, owner, plain)["inputs_learned"] == 0  # off by default
    np.testing.assert_array_equal(probs(app, other, plain), start)


def test_turning_it_off_stops_learning_keeps_what_was_learned_and_survives_a_restart(app, owner, other):
    cid = create(app, owner, learn_from_inputs=True)
    feed(app, owner, cid, TEXTS[:80])
    learned = settled(app, owner, cid, 80)["inputs_learned"]
    assert learned == 80
    adapted = probs(app, other, cid)
    # a settings-only update: no `input` at all; nothing to embed, nothing charged
    off = post(app, "/v1/train", owner, {"classifier_id": cid, "learn_from_inputs": False})
    assert off == {"classifier_id": cid, "num_samples": 0, "usage": {"total_tokens": 0}}
    feed(app, owner, cid, TEXTS[80:])
    time.sleep(1.0)
    s = summary(app, owner, cid)
    assert (s["learn_from_inputs"], s["inputs_learned"]) == (False, learned)
    np.testing.assert_array_equal(probs(app, other, cid), adapted)  # kept, and nothing more learned
    kill_shards()  # every shard's memory gone: the adapted state comes back from the store
    s = summary(app, owner, cid)
    assert (s["learn_from_inputs"], s["inputs_learned"]) == (False, learned)
    np.testing.assert_array_equal(probs(app, other, cid), adapted)
    post(app, "/v1/train", owner, {"classifier_id": cid, "input": [], "learn_from_inputs": True})  # back on
    feed(app, owner, cid, TEXTS[80:96])
    assert settled(app, owner, cid, learned + 16)["inputs_learned"] == learned + 16


def test_concurrent_classify_and_train_lose_no_acknowledged_train(app, owner):
    cid = create(app, owner, learn_from_inputs=True)
    stop, errors = threading.Event(), []

    def classify_forever():
        i = 0
        while not stop.is_set():
            r = app[0].post("/v1/classify", headers=owner, json={"classifier_id": cid, "input": TEXTS[i % 150 : i % 150 + 15]})
            if r.status_code != 200:
                errors.append(r.text)
            i += 15

    workers = [threading.Thread(target=classify_forever) for _ in range(2)]
    for w in workers:
        w.start()
    acknowledged = 0
    try:
        for i in range(6):
            batch = [{"text": t, "label": lab} for t, lab in zip(TEXTS[i * 10 : i * 10 + 10], TRUTH[i * 10 : i * 10 + 10], strict=True)]
            acknowledged += post(app, "/v1/train", owner, {"classifier_id": cid, "input": batch})["num_samples"]
            time.sleep(0.2)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert not errors
    s = settled(app, owner, cid, 1)
    assert s["num_samples"] == acknowledged == 60 and s["updated_number"] == 6  # every acknowledged train is there
    assert s["inputs_learned"] > 0
    kill_shards()
    assert summary(app, owner, cid)["num_samples"] == 60


@pytest.mark.parametrize("value", ["yes", 1, "true", None, [True], {"on": True}])
def test_bad_values_are_jina_4xx_and_change_nothing(app, owner, value):
    cid = create(app, owner, learn_from_inputs=True)
    before = summary(app, owner, cid)
    body = {"classifier_id": cid, "input": [], "learn_from_inputs": value}
    if value is None:  # null: neither on nor off, and no examples: nothing to do
        r = app[0].post("/v1/train", headers=owner, json=body)
        assert r.status_code == 400 and r.json()["code"] == "INPUT_INVALID", r.text
    else:
        r = app[0].post("/v1/train", headers=owner, json=body)
        assert r.status_code == 422 and r.json()["code"] == "INPUT_VALIDATION_FAILED", r.text
        assert set(r.json()) >= {"code", "detail", "request_id"}
    assert summary(app, owner, cid) == before


def test_only_the_owner_may_set_it_and_input_may_be_left_out_only_for_it(app, owner, other):
    cid = create(app, owner)
    r = app[0].post("/v1/train", headers=other, json={"classifier_id": cid, "learn_from_inputs": True})
    assert r.status_code == 404 and r.json()["code"] == "RESOURCE_NOT_FOUND"  # public: classify yes, change no
    r = app[0].post("/v1/train", headers=owner, json={"classifier_id": cid})  # no input, no setting
    assert r.status_code == 422 and r.json()["code"] == "INPUT_VALIDATION_FAILED"
    r = app[0].post("/v1/train", headers=owner, json={"model": MODEL, "labels": LABELS, "learn_from_inputs": True})
    assert r.status_code == 422  # a create needs `input` ([] with declared labels), as in Jina's spec
    assert summary(app, owner, cid)["learn_from_inputs"] is False
