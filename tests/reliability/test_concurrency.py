"""Concurrency: 16+ clients training the same and different classifiers lose no update, and the per-account
classifier limit is exact when creates race."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import LocalDirStore
from tests.reliability.helpers import BIG, MODEL, deploy_variant

pytestmark = pytest.mark.e2e
APP = "races"
EXAMPLES = [{"text": "Rain all day tomorrow.", "label": "weather"}, {"text": "The striker scored twice.", "label": "sport"}]


@pytest.fixture(scope="module")
def app(serve_url, tmp_path_factory):
    store = tmp_path_factory.mktemp("races-store")
    accounts = {"require_keys": True, "tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train", "embeddings")}}}
    deploy_variant(APP, str(store), accounts=accounts, limits={"max_classifiers_per_owner": 3},
                   ingress={"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.05}})
    yield f"{serve_url}/{APP}", AccountStore(LocalDirStore(store))
    serve.delete(APP)


def test_sixteen_clients_training_lose_no_update(app, reliability):
    url, keys = app
    h = {"Authorization": f"Bearer {keys.create_key('trainers')[1]}"}
    with httpx.Client(base_url=url, timeout=120) as c:
        cids = [c.post("/v1/train", headers=h, json={"model": MODEL, "input": EXAMPLES}).json()["classifier_id"] for _ in range(3)]
        jobs = [(cids[i % 3] if i % 2 else cids[0], i) for i in range(64)]  # half on one classifier, the rest spread

        def update(job):
            cid, i = job
            r = c.post("/v1/train", headers=h, json={"classifier_id": cid,
                                                     "input": [{"text": f"update {i} rain", "label": "weather"}] * (1 + i % 3)})
            return cid, r.status_code, 1 + i % 3

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(update, jobs))
        assert all(s == 200 for _, s, _ in results), [s for _, s, _ in results]
        listed = {x["classifier_id"]: x for x in c.get("/v1/classifiers", headers=h).json()}
    for cid in cids:
        added = sum(n for c_, _, n in results if c_ == cid)
        updates = sum(1 for c_, _, _ in results if c_ == cid)
        assert listed[cid]["num_samples"] == len(EXAMPLES) + added
        assert listed[cid]["updated_number"] == updates
        reliability.add("acknowledged writes verified", updates)
    reliability.add("requests sent", len(results) + 4)


def test_racing_creates_respect_the_per_account_limit_exactly(app, reliability):
    url, keys = app
    accounts = [{"Authorization": f"Bearer {keys.create_key(f'racer{i}')[1]}"} for i in range(2)]
    with httpx.Client(base_url=url, timeout=120) as c, ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: (i % 2, c.post("/v1/train", headers=accounts[i % 2],
                                                          json={"model": MODEL, "input": EXAMPLES}).status_code), range(20)))
        for a, h in enumerate(accounts):
            codes = [s for who, s in results if who == a]
            assert codes.count(200) == 3 and codes.count(403) == 7, codes
            assert len(c.get("/v1/classifiers", headers=h).json()) == 3
    reliability.add("requests sent", len(results))
