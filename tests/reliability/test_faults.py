"""Faults under load: kill an embedder replica, an ingress replica and a state shard while clients classify and
train; then kill the whole app mid-train and start it again. Nothing acknowledged may be lost, no answer may be
wrong, and the service is healthy again within 30 s.

Clients behave as a careful client does: every /train carries an Idempotency-Key and is retried with the same
key until it is acknowledged, so "acknowledged" and "applied" must agree exactly.
"""
from __future__ import annotations

import threading
import time
from collections import Counter

import httpx
import pytest
import ray
from ray import serve

from deployments.classifier_shards import store_digest
from tests.reliability.helpers import (
    MODEL,
    deploy_variant,
    is_error_body,
    kill_named,
    kill_replica,
    replica_actors,
    shard_actors,
    wait_healthy,
)

pytestmark = pytest.mark.e2e
APP = "faults"
SEED = {
    "weather": ["It will rain all day tomorrow.", "Expect snow and freezing wind tonight.", "A sunny, hot afternoon is forecast."],
    "sport": ["The striker scored a late winner.", "She won the tennis final in three sets.", "The team lost the derby at home."],
    "cooking": ["Simmer the sauce for twenty minutes.", "Knead the dough and let it rise.", "Fry the onions until golden."],
}
UPDATES = [("Thunderstorms are rolling in from the west.", "weather"), ("He ran the marathon in record time.", "sport"),
           ("Season the soup with salt and pepper.", "cooking")]
ZS = {"model": MODEL, "input": ["Heavy rain and thunderstorms expected tomorrow."], "labels": ["weather", "sport", "cooking"]}


@pytest.fixture(scope="module")
def app(serve_url, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("faults-store"))
    overrides = {"ingress": {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.05}}}
    deploy_variant(APP, store, **overrides)
    yield f"{serve_url}/{APP}", store, overrides
    serve.delete(APP)


class Load:
    """Clients classifying (zero-shot and few-shot) and training until stopped; everything they saw is kept."""

    def __init__(self, url: str, classifiers: list[str], *, classify: bool = True):
        self.url, self.classifiers = url, classifiers
        self.stop = threading.Event()
        self.statuses: Counter = Counter()
        self.bad: list[str] = []  # wrong answers, or errors without Jina's body
        self.acknowledged = Counter()  # classifier -> examples acknowledged
        self.attempted = Counter()
        self.sent = 0
        self.threads = [threading.Thread(target=self._train, args=(cid,), daemon=True) for cid in classifiers]
        if classify:
            self.threads += [threading.Thread(target=self._zero_shot, daemon=True)]
            self.threads += [threading.Thread(target=self._few_shot, args=(cid,), daemon=True) for cid in classifiers[:1]]

    def _record(self, r: httpx.Response) -> None:
        self.sent += 1
        self.statuses[r.status_code] += 1
        if r.status_code >= 500 and not is_error_body(r):  # a killed ingress's requests included (Ray's proxy)
            self.bad.append(f"{r.status_code} without the error body: {r.text[:120]}")
        elif r.status_code == 500:
            self.bad.append(f"500 from the service: {r.text[:200]}")
        elif r.status_code not in (200, 409, 503, 504):  # 409: a retried /train whose first try is still running
            self.bad.append(f"unexpected {r.status_code}: {r.text[:200]}")

    def _post(self, client, path, body, headers=None):
        try:
            r = client.post(path, json=body, headers=headers)
        except httpx.HTTPError as exc:  # a connection the killed replica held
            self.sent += 1
            self.statuses[type(exc).__name__] += 1
            return None
        self._record(r)
        return r

    def _zero_shot(self):
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                r = self._post(c, "/v1/classify", ZS)
                if r is not None and r.status_code == 200 and r.json()["data"][0]["prediction"] != "weather":
                    self.bad.append(f"wrong zero-shot answer {r.json()['data'][0]}")

    def _few_shot(self, cid):
        with httpx.Client(base_url=self.url, timeout=60) as c:
            while not self.stop.is_set():
                r = self._post(c, "/v1/classify", {"classifier_id": cid, "input": ["Snow and ice on the roads tonight."]})
                if r is not None and r.status_code == 200 and r.json()["data"][0]["prediction"] != "weather":
                    self.bad.append(f"wrong few-shot answer {r.json()['data'][0]}")

    def _train(self, cid):
        with httpx.Client(base_url=self.url, timeout=60) as c:
            i = 0
            while not self.stop.is_set():
                text, label = UPDATES[i % len(UPDATES)]
                key = f"{cid}-{i}"
                self.attempted[cid] += 1
                for _ in range(60):  # the same key until acknowledged (bounded)
                    r = self._post(c, "/v1/train", {"classifier_id": cid, "input": [{"text": f"{text} ({i})", "label": label}]},
                                   headers={"Idempotency-Key": key})
                    if r is not None and r.status_code == 200:
                        self.acknowledged[cid] += 1
                        break
                    time.sleep(0.3)
                i += 1

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=120)


def create_classifiers(client: httpx.Client, n: int) -> list[str]:
    examples = [{"text": t, "label": lab} for lab, ts in SEED.items() for t in ts]
    out = []
    for _ in range(n):
        r = client.post("/v1/train", json={"model": MODEL, "input": examples})
        assert r.status_code == 200, r.text
        out.append(r.json()["classifier_id"])
    return out


def samples(client: httpx.Client) -> dict[str, int]:
    return {c["classifier_id"]: c["num_samples"] for c in client.get("/v1/classifiers").json()}


def test_killing_an_embedder_an_ingress_and_a_shard_under_load_loses_nothing(app, reliability):
    url, store, _ = app
    with httpx.Client(base_url=url, timeout=60) as client:
        cids = create_classifiers(client, 3)
        before = samples(client)
        with Load(url, cids) as load:
            time.sleep(3)
            kill_replica(APP, "TextEmbedder-all-MiniLM-L6-v2")
            time.sleep(4)
            kill_replica(APP, "Ingress")
            time.sleep(4)
            kill_named(shard_actors(store_digest(store))[0], restart=True)
            reliability.add("faults injected", 3)
            time.sleep(3)
            healthy_in = wait_healthy(client, ZS)
            time.sleep(2)
        assert healthy_in < 30
        after = samples(client)
    reliability.add("requests sent", load.sent)
    reliability.add("5xx seen", sum(n for s, n in load.statuses.items() if isinstance(s, int) and s >= 500))
    assert not load.bad, load.bad[:5]
    # a request in flight on the killed ingress answers 503 with the Jina body (serve_app.proxy_errors), never plain text
    assert load.statuses[200] > 50, load.statuses
    for cid in cids:
        assert after[cid] == before[cid] + load.acknowledged[cid], (cid, before[cid], load.acknowledged[cid], after[cid])
        reliability.add("acknowledged writes verified", load.acknowledged[cid])


def test_killing_the_whole_app_mid_train_keeps_every_acknowledged_update(app, reliability):
    url, store, overrides = app
    with httpx.Client(base_url=url, timeout=60) as client:
        cids = create_classifiers(client, 2)
        before = samples(client)
        with Load(url, cids, classify=False) as load:
            time.sleep(3)
            for name in replica_actors(APP, "Ingress") + replica_actors(APP, "TextEmbedder-all-MiniLM-L6-v2"):
                ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
            for name in shard_actors(store_digest(store)):
                kill_named(name, restart=False)
            reliability.add("faults injected", 1)
            serve.delete(APP)
            deploy_variant(APP, store, **overrides)  # a fresh deploy over the same store
            wait_healthy(client, ZS)
            time.sleep(2)
        after = samples(client)
    reliability.add("requests sent", load.sent)
    for cid in cids:
        acked, tried = load.acknowledged[cid], load.attempted[cid]
        # every acknowledged update is there; one that was in flight when the app died may be there too
        assert before[cid] + acked <= after[cid] <= before[cid] + tried, (cid, before[cid], acked, tried, after[cid])
        reliability.add("acknowledged writes verified", acked)
    assert not [b for b in load.bad if "500 from the service" in b], load.bad[:5]
