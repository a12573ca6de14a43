"""Security over HTTP: every route behind keys and ownership, SSRF forms refused without leaking why, oversize
and chunked bodies, pathological Unicode, ids and labels aimed at store paths. Nothing may answer 5xx."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import LocalDirStore
from tests.reliability.helpers import BIG, MODEL, deploy_variant, is_error_body

pytestmark = pytest.mark.e2e
APP = "secure"
EXAMPLES = [{"text": "Rain all day tomorrow.", "label": "weather"}, {"text": "The striker scored twice.", "label": "sport"}]
OPEN = {"/health", "/live", "/ready", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}


@pytest.fixture(scope="module")
def app(serve_url, tmp_path_factory):
    store = tmp_path_factory.mktemp("secure-store")
    accounts = {"require_keys": True, "tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train", "embeddings")}}}
    deploy_variant(APP, str(store), accounts=accounts, ingress={"max_request_bytes": 200_000})
    yield f"{serve_url}/{APP}", AccountStore(LocalDirStore(store)), store
    serve.delete(APP)


def bearer(keys: AccountStore, name: str) -> dict:
    return {"Authorization": f"Bearer {keys.create_key(name)[1]}"}


def no_5xx(r: httpx.Response, reliability) -> httpx.Response:
    reliability.add("requests sent")
    assert r.status_code < 500, f"{r.request.method} {r.request.url}: {r.status_code} {r.text[:300]}"
    if r.status_code >= 400:
        assert is_error_body(r), r.text[:300]
    return r


def test_every_v1_route_needs_a_key_and_other_accounts_see_nothing(app, reliability):
    url, keys, _ = app
    a, b = bearer(keys, "a"), bearer(keys, "b")
    with httpx.Client(base_url=url, timeout=60) as c:
        schema = c.get("/openapi.json").json()
        cid = no_5xx(c.post("/v1/train", headers=a, json={"model": MODEL, "access": "private", "input": EXAMPLES}),
                     reliability).json()["classifier_id"]
        bodies = {"/v1/classify": {"classifier_id": cid, "input": ["x"]}, "/v1/train": {"classifier_id": cid, "input": EXAMPLES[:1]},
                  "/v1/embeddings": {"model": MODEL, "input": ["x"]}}
        routes = [(m.upper(), p) for p, ops in schema["paths"].items() for m in ops]
        assert {p for _, p in routes} - OPEN >= {"/v1/classify", "/v1/train", "/v1/embeddings", "/v1/classifiers",
                                                  "/v1/classifiers/{classifier_id}", "/v1/models", "/v1/models/{model_id}", "/v1/stats"}
        for method, path in routes:
            concrete = path.replace("{classifier_id}", cid).replace("{model_id}", MODEL)
            kw = {"json": bodies[path]} if path in bodies else {}
            r = no_5xx(c.request(method, concrete, **kw), reliability)
            if path in OPEN:
                assert r.status_code == 200, (path, r.status_code)
                continue
            assert r.status_code == 401 and r.json()["code"] == "AUTH_MISSING_API_KEY", (method, path, r.text)
            r = no_5xx(c.request(method, concrete, headers={"Authorization": "Bearer rck_0123456789ab_" + "x" * 43}, **kw), reliability)
            assert r.status_code == 401 and r.json()["code"] == "AUTH_INVALID_API_KEY"
            if "{classifier_id}" in path or path in ("/v1/classify", "/v1/train"):
                r = no_5xx(c.request(method, concrete, headers=b, **kw), reliability)
                assert r.status_code == 404 and r.json()["code"] == "RESOURCE_NOT_FOUND", (method, path, r.text)
        assert no_5xx(c.get("/v1/classifiers", headers=b), reliability).json() == []
        assert [x["classifier_id"] for x in no_5xx(c.get("/v1/classifiers", headers=a), reliability).json()] == [cid]


def test_oversized_and_chunked_bodies_are_refused_through_the_proxy(app, reliability):
    url, keys, _ = app
    h = {**bearer(keys, "big"), "Content-Type": "application/json"}
    body = json.dumps({"model": MODEL, "input": ["word " * 60_000], "labels": ["a", "b"]}).encode()  # ~300 KB
    with httpx.Client(base_url=url, timeout=60) as c:
        r = no_5xx(c.post("/v1/classify", content=body, headers=h), reliability)
        assert r.status_code == 413 and r.json()["code"] == "INPUT_TOO_LARGE"
        r = no_5xx(c.post("/v1/classify", content=iter([body[i:i + 8192] for i in range(0, len(body), 8192)]), headers=h),
                   reliability)
        assert "content-length" not in r.request.headers
        assert r.status_code == 413 and r.json()["code"] == "INPUT_TOO_LARGE"


UNICODE = [
    "\u202eevil\u202c", "e" + "\u0301" * 2000, "\u200b\u200d\u2060", "👩‍👩‍👧‍👦" * 50, "\u3000\u3000", "a\x00b",
    "\ufeffbom", "Ｆｕｌｌｗｉｄｔｈ", "ﷺ" * 100, "\U0010ffff", "İstanbul", "ß" * 300,
]


def test_pathological_unicode_never_breaks_a_request(app, reliability):
    url, keys, _ = app
    h = bearer(keys, "unicode")
    with httpx.Client(base_url=url, timeout=60) as c:
        for text in UNICODE:
            for body in ({"model": MODEL, "input": [text], "labels": [text, "plain"]},
                         {"model": MODEL, "input": [text], "labels": {text[:60] or "g": ["a", text]}},
                         {"model": MODEL, "input": text}):
                path = "/v1/embeddings" if "labels" not in body else "/v1/classify"
                no_5xx(c.post(path, headers=h, json=body), reliability)
            r = no_5xx(c.post("/v1/train", headers=h, json={"model": MODEL, "input": [{"text": text, "label": text}, EXAMPLES[1]]}),
                       reliability)
            if r.status_code == 200:
                no_5xx(c.delete(f"/v1/classifiers/{r.json()['classifier_id']}", headers=h), reliability)
        raw = b'{"model": "%s", "input": ["\\ud800 lone", "\\udfff"], "labels": ["\\ud800", "ok"]}' % MODEL.encode()
        no_5xx(c.post("/v1/classify", headers={**h, "Content-Type": "application/json"}, content=raw), reliability)


def test_ids_and_labels_aimed_at_store_paths_stay_data(app, reliability):
    url, keys, store = app
    h = bearer(keys, "paths")
    outside = Path(store).parent / "pwned"
    with httpx.Client(base_url=url, timeout=60) as c:
        for cid in ("../fence", "..%2F..%2Ffence", "..", "%2e%2e", "a/b", "x" * 300, "fence.json", "../../accounts/keys/x"):
            r = no_5xx(c.post("/v1/classify", headers=h, json={"classifier_id": cid, "input": ["x"]}), reliability)
            assert r.status_code in (404, 422), (cid, r.status_code)
            r = no_5xx(c.delete(f"/v1/classifiers/{cid}", headers=h), reliability)
            assert r.status_code in (404, 405), (cid, r.status_code)
        labels = ["../../pwned", "/etc/passwd", "..\\..\\pwned", "accounts/keys/x"]
        r = no_5xx(c.post("/v1/train", headers=h, json={"model": MODEL, "input": [{"text": f"t {i}", "label": lab} for i, lab in enumerate(labels)]}),
                   reliability)
        assert r.status_code == 200
        listed = no_5xx(c.get("/v1/classifiers", headers=h), reliability).json()
        assert sorted(listed[0]["labels"]) == sorted(labels)  # labels are data, kept as sent
    assert not outside.exists() and not Path("/etc/pwned").exists()
    assert {p.name for p in Path(store).iterdir()} <= {"classifiers", "owners", "usage", "accounts", "fence.json", ".lock"}


SSRF = [
    "http://127.0.0.1:1/img.png", "http://localhost/img.png", "http://[::1]/img.png", "http://[::ffff:127.0.0.1]/img.png",
    "http://10.1.2.3/img.png", "http://169.254.169.254/latest/meta-data/", "http://0x7f000001/img.png",
    "http://2130706433/img.png", "http://0177.0.0.1/img.png", "http://[fec0::1]/img.png", "http://192.0.0.8/img.png",
    "http://example.com:22/img.png", "http://example.com:6379/", "file:///etc/passwd", "gopher://127.0.0.1:25/",
    "http://user:pass@example.com/img.png",
]


def test_image_urls_aimed_inside_are_refused_without_saying_why(http, image_server, reliability):
    """Against the session app (its CLIP model, its allowlisted test image server): every form below is refused,
    and fetch failures all read alike (no connect/TLS/status distinction: no port scanning through us)."""
    urls = SSRF + [image_server.url("/redirect?to=" + u) for u in ("http://127.0.0.1:1/x", "http://169.254.169.254/")]
    urls += [image_server.url("/status/500"), image_server.url("/img.png").replace(str(image_server.port), "1")]
    for url in urls:
        r = http.post("/v1/classify", json={"model": "tiny-clip", "input": [{"image": url}], "labels": ["a", "b"]})
        no_5xx(r, reliability)
        assert r.status_code == 400 and r.json()["code"] == "INPUT_INVALID_IMAGE", (url, r.text)
        detail = r.json()["detail"].lower()
        for leak in ("connect", "tls", "ssl", "refused", "timed out", "status 500", "reset"):
            assert leak not in detail, (url, detail)
