"""Python callers: another Ray app (or a driver) calls the classifier through a DeploymentHandle."""
from __future__ import annotations

import pytest
from ray import serve

from classifiers.protocol.errors import InvalidLabels
from classifiers.protocol.wire import ClassificationResponse, ClassifyRequest

pytestmark = pytest.mark.e2e


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class Caller:
    """A separate Serve app that uses the classifier app through its handle, not HTTP."""

    def __init__(self, app_name: str):
        self.classifier = serve.get_app_handle(app_name)

    async def __call__(self, request) -> dict:
        req = ClassifyRequest(model="all-MiniLM-L6-v2", input=[await request.body()], labels=["weather", "sport", "cooking"])
        resp: ClassificationResponse = await self.classifier.classify.remote(req)
        return {"prediction": resp.data[0].prediction}


def test_handle_call_from_the_driver(serve_url):
    handle = serve.get_app_handle("classifier")
    req = ClassifyRequest(model="multilingual-e5-small", input=["Bake the cake for forty minutes."], labels=["weather", "sport", "cooking"])
    resp = handle.classify.remote(req).result(timeout_s=120)
    assert isinstance(resp, ClassificationResponse)
    assert resp.data[0].prediction == "cooking"
    assert resp.usage.total_tokens > 0


def test_handle_errors_are_typed(serve_url):
    handle = serve.get_app_handle("classifier")
    with pytest.raises(InvalidLabels) as info:
        handle.classify.remote(ClassifyRequest(model="all-MiniLM-L6-v2", input=["x"], labels=["a", "a"])).result(timeout_s=60)
    assert info.value.code == "INPUT_INVALID_LABELS" and info.value.status == 400


def test_handle_call_from_another_serve_app(serve_url, http):
    serve.run(Caller.bind("classifier"), name="caller", route_prefix="/caller")
    try:
        r = http.post("/caller", content="The match went to extra time and penalties.")
        assert r.status_code == 200, r.text
        assert r.json() == {"prediction": "sport"}
    finally:
        serve.delete("caller")
