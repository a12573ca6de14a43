"""The cluster's Serve config (deploy/serve_config.gpu.yaml) started locally on CPU, and autoscaling shown.

The config's app is built by its own ``import_path`` builder with its own ``args``; the GPU fields are overridden
for this CPU machine (no ``num_gpus``, small CPU shares, MiniLM only: the e5 and CLIP entries need more cores
or the Hub), and each ``deployments:`` entry's options are applied through the AppConfig fields they correspond
to (``ingress:``, ``embedder_overrides:``), because Serve's declarative deploy would replace the test session's
other applications. The autoscaling settings are the config's, with the look-back and delays shortened so a test
can watch them: under load the embedder scales from 1 to 2 replicas while every answer stays right, and back to
1 when the load stops.
"""
from __future__ import annotations

import copy
import threading
import time

import httpx
import pytest
import yaml
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import LocalDirStore
from serve_app.app import build_app
from tests.conftest import ROOT
from tests.reliability.helpers import replica_actors

pytestmark = pytest.mark.e2e
APP = "gpuconfig"
MODEL = "all-MiniLM-L6-v2"
EMBEDDER = f"TextEmbedder-{MODEL}"
FAST = {"upscale_delay_s": 0.5, "downscale_delay_s": 3, "look_back_period_s": 1, "metrics_interval_s": 0.5}


def cpu_app_args(store: str) -> dict:
    cfg = yaml.safe_load((ROOT / "deploy" / "serve_config.gpu.yaml").read_text())
    (app,) = cfg["applications"]
    args = copy.deepcopy(app["args"])
    args["models"] = [MODEL]
    args["embedder_overrides"] = {MODEL: args["embedder_overrides"][MODEL]}
    args["state"]["store_url"] = store
    args["app_name"] = APP
    by_name = {d["name"]: d for d in app["deployments"]}
    ingress, embedder = by_name["Ingress"], by_name[EMBEDDER]
    assert "num_gpus" in embedder["ray_actor_options"], "the config this test overrides has changed"
    args.setdefault("ingress", {}).update(
        ray_actor_options={"num_cpus": 0.05},
        autoscaling_config={**ingress["autoscaling_config"], "min_replicas": 1, "max_replicas": 1},
    )
    scaling = {**embedder["autoscaling_config"], **FAST, "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2}
    args["embedder_overrides"][MODEL].update(
        ray_actor_options={"num_cpus": 0.1}, autoscaling_config=scaling, num_threads=1,
        max_batch_size=4, max_ongoing_requests=8,
    )
    return args


def test_the_gpu_serve_config_runs_on_cpu_and_its_embedder_autoscales(serve_url, tmp_path):
    args = cpu_app_args(str(tmp_path))
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    try:
        key = AccountStore(LocalDirStore(tmp_path)).create_key("autoscale")[1]  # the config requires keys
        h = {"Authorization": f"Bearer {key}"}
        body = {"model": MODEL, "input": [f"Heavy rain and wind expected tomorrow ({i})" for i in range(16)],
                "labels": ["weather", "sport", "cooking"]}
        stop, wrong, answered = threading.Event(), [], [0]

        def client():
            with httpx.Client(base_url=f"{serve_url}/{APP}", timeout=120) as c:
                while not stop.is_set():
                    r = c.post("/v1/classify", json=body, headers=h)
                    if r.status_code != 200 or {d["prediction"] for d in r.json()["data"]} != {"weather"}:
                        wrong.append(r.text[:200])
                    answered[0] += 1

        threads = [threading.Thread(target=client, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        deadline, peak = time.time() + 90, 1
        while time.time() < deadline and peak < 2:
            time.sleep(0.5)
            peak = max(peak, len(replica_actors(APP, EMBEDDER)))
        time.sleep(3)  # answers while the new replica takes traffic
        stop.set()
        for t in threads:
            t.join(timeout=120)
        assert peak >= 2, "the embedder did not scale up under load"
        assert not wrong, wrong[:3]
        deadline = time.time() + 90
        while time.time() < deadline and len(replica_actors(APP, EMBEDDER)) > 1:
            time.sleep(1)
        assert len(replica_actors(APP, EMBEDDER)) == 1, "the embedder did not scale back down when the load stopped"
    finally:
        serve.delete(APP)
