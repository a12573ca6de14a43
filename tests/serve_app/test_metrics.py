"""Prometheus metrics: after real traffic, Ray's metrics endpoint exports the service's own metrics."""
from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import METRICS_PORT

pytestmark = pytest.mark.e2e
MODEL = "all-MiniLM-L6-v2"
WANTED = [
    'ray_classifier_requests_total{.*route="/v1/classify".*status="200"',
    'ray_classifier_requests_total{.*status="400"',
    "ray_serve_http_request_latency_ms_bucket",  # request latency: Serve's own (ours is not recorded twice)
    "ray_serve_deployment_replica_healthy",  # the dashboard's replicas panel
    'ray_classifier_inputs_total{.*mode="zeroshot".*model="all-MiniLM-L6-v2"',
    'ray_classifier_tokens_total{.*mode="train"',
    'ray_classifier_tokens_total{.*mode="embeddings"',
    'ray_classifier_fewshot_operations_total{.*op="create"',
    'ray_classifier_fewshot_operations_total{.*op="classify"',
    'ray_classifier_label_cache_lookups_total{.*result="hit"',
    "ray_classifier_embedder_batch_requests_bucket",
    "ray_classifier_embedder_batch_items_bucket",
    "ray_classifier_embedder_queue_wait_ms_bucket",
    "ray_classifier_classifiers_loaded",
    'ray_classifier_image_fetch_failures_total{.*reason="',
]


REFUSALS = 'ray_classifier_refusals_total{.*code="RATE_REQUEST_LIMIT_EXCEEDED"'  # checked in test_accounts_http.py


def scrape_until(patterns: list[str], timeout_s: float = 60) -> list[str]:
    """The patterns not (yet) on Ray's metrics endpoint after up to timeout_s (replicas report every second)."""
    missing, deadline = list(patterns), time.time() + timeout_s
    while missing and time.time() < deadline:
        time.sleep(1)
        text = httpx.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=30).text
        missing = [w for w in missing if not re.search(w, text)]
    return missing


def test_metrics_are_exported_after_real_traffic(http, image_server):
    zs = {"model": MODEL, "input": ["Will it rain tomorrow?"], "labels": ["weather", "sport"]}
    for _ in range(2):
        assert http.post("/v1/classify", json=zs).status_code == 200  # the second hits the label cache
    assert http.post("/v1/classify", json={**zs, "labels": ["a", "a"]}).status_code == 400
    r = http.post("/v1/train", json={"model": MODEL, "input": [{"text": "Rain tomorrow", "label": "weather"},
                                                               {"text": "Goal in extra time", "label": "sport"}]})
    cid = r.json()["classifier_id"]
    assert http.post("/v1/classify", json={"classifier_id": cid, "input": ["Snow tonight"]}).status_code == 200
    assert http.post("/v1/embeddings", json={"model": MODEL, "input": ["hello"]}).status_code == 200
    bad = {"model": "tiny-clip", "input": [{"image": image_server.url("/status/404")}], "labels": ["a", "b"]}
    assert http.post("/v1/classify", json=bad).status_code == 400
    missing = scrape_until(WANTED)
    http.delete(f"/v1/classifiers/{cid}")
    assert not missing, f"not exported: {missing}; image embedder: {http.get('/v1/stats').json()['embedders']['tiny-clip']}"


def test_the_grafana_dashboard_queries_only_metrics_the_service_exports():
    """Every metric the dashboard queries (ours, ray_classifier_*, and Serve's request latency) is one this test file
    requires to be exported."""
    import json

    from tests.conftest import ROOT

    dash = json.loads((ROOT / "deploy" / "grafana" / "classifier-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"ray_(?:classifier|serve)_[a-z_]+", e)}
    exported = {re.match(r"(ray_[a-z_]+)", w).group(1) for w in WANTED + [REFUSALS]}
    assert used and used <= {re.sub(r"_bucket$", "", x) for x in exported}, used - exported
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
