"""End-to-end image classification through the real app with a tiny random CLIP (loaded from disk).

Vectors of a random model carry no meaning, so these tests check the plumbing and the safety rules: every
input form reaches the model, text and images share one space, label groups, few-shot over images, usage,
and every refusal answered 4xx with Jina's error body while the service stays healthy."""
from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.image_server import PNG, _png

pytestmark = pytest.mark.e2e
MODEL = "tiny-clip"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def classify(http, inputs, labels=("cat", "dog", "flower")):
    return http.post("/v1/classify", json={"model": MODEL, "input": inputs, "labels": list(labels)})


def test_base64_data_uri_and_url_images_mixed_with_text(http, image_server, app_config):
    url = image_server.url("/img.png")
    inputs = [{"image": b64(PNG)}, {"image": "data:image/png;base64," + b64(PNG)}, {"image": url}, "a photo of a cat", {"text": "dog"}]
    r = classify(http, inputs)
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert [d["index"] for d in data] == list(range(5))
    # the same picture in three encodings embeds identically
    s = [[p["score"] for p in d["predictions"]] for d in data]
    assert np.allclose(s[0], s[1], atol=1e-6) and np.allclose(s[0], s[2], atol=1e-6)
    image_tokens = next(m for m in app_config.extra_models if m.name == MODEL).image_tokens
    assert r.json()["usage"]["total_tokens"] >= 3 * image_tokens


def test_real_photos_by_url_and_label_groups(http, image_server):
    names = list(image_server.files)[:3]
    if not names:
        pytest.skip("shared/data/images is not present")
    inputs = [{"image": image_server.url(f"/files/{n}")} for n in names]
    r = http.post("/v1/classify", json={"model": MODEL, "input": inputs, "labels": {"kind": ["daisy", "rose"], "color": ["white", "red", "yellow"]}})
    assert r.status_code == 200, r.text
    for d in r.json()["data"]:
        assert set(d["prediction"]) == {"kind", "color"}
        assert abs(sum(p["score"] for p in d["predictions"]["color"]) - 1) < 1e-5


def test_fewshot_over_images_and_text(http, image_server):
    red, blue = _png((24, 24), "RGB", (250, 0, 0)), _png((24, 24), "RGB", (0, 0, 250))
    items = [{"image": b64(red), "label": "red"}, {"image": b64(blue), "label": "blue"}, {"text": "crimson", "label": "red"}]
    r = http.post("/v1/train", json={"model": MODEL, "input": items})
    assert r.status_code == 200, r.text
    cid = r.json()["classifier_id"]
    try:
        r = http.post("/v1/classify", json={"classifier_id": cid, "input": [{"image": b64(red)}, {"image": image_server.url("/img.png")}, "navy"]})
        assert r.status_code == 200, r.text
        assert len(r.json()["data"]) == 3
    finally:
        http.delete(f"/v1/classifiers/{cid}")


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda s: f"http://127.0.0.1:{s.port + 1 if s.port < 65535 else 1}/img.png", "input[1]"),  # loopback, not allowlisted
        (lambda s: "http://localhost/x.png", "input[1]"),
        (lambda s: s.url("/redirect?to=http://10.0.0.1/x.png"), "input[1]"),  # redirect to a private address
        (lambda s: s.url("/redirect?to=http://169.254.169.254/latest/meta-data"), "input[1]"),
        (lambda s: s.url("/big"), "input[1]"),  # over 8 MB
        (lambda s: s.url("/text"), "input[1]"),  # not an image
        (lambda s: s.url("/bomb.png"), "input[1]"),  # pixel bomb
        (lambda s: "file:///etc/passwd", "input[1]"),
        (lambda s: "ftp://example.com/x.png", "input[1]"),
        (lambda s: "data:image/png;base64,!!!notbase64", "input[1]"),
        (lambda s: b64(b"definitely not an image"), "input[1]"),
    ],
)
def test_every_refusal_is_a_400_naming_the_image(http, image_server, make, fragment):
    r = classify(http, ["fine text", {"image": make(image_server)}])
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["code"] == "INPUT_INVALID_IMAGE" and fragment in body["detail"] and body["request_id"]
    assert classify(http, [{"image": b64(PNG)}]).status_code == 200  # still healthy


def test_text_only_models_refuse_images_naming_image_models(http):
    r = http.post("/v1/classify", json={"model": "all-MiniLM-L6-v2", "input": [{"image": b64(PNG)}], "labels": ["a", "b"]})
    assert r.status_code == 400 and r.json()["code"] == "INPUT_UNSUPPORTED_MODALITY"
    assert "tiny-clip" in r.json()["detail"]
    models = {m["id"]: m for m in http.get("/v1/models").json()["data"]}
    assert models[MODEL]["input_modalities"] == ["image", "text"]


def test_image_batches_are_coalesced(http, serve_url):
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    def one(i):
        with httpx.Client(base_url=serve_url, timeout=60) as c:
            return c.post("/v1/classify", json={"model": MODEL, "input": [{"image": b64(_png((20 + i, 20), "RGB", (i, 0, 0)))}], "labels": ["a", "b"]}).status_code

    before = http.get("/v1/stats").json()["embedders"][MODEL]["image_batches"]
    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(one, range(32))) == [200] * 32
    after = http.get("/v1/stats").json()["embedders"][MODEL]["image_batches"]
    assert after["requests"] - before["requests"] == 32
    assert after["images"] - before["images"] == 32
    assert after["batches"] - before["batches"] < 32 and after["max_requests_in_batch"] > 1, after
