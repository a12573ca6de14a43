"""`python -m serve_app`'s start-up rules that need no Ray: anonymous mode only on loopback unless allowed."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from serve_app.run import descendants, is_loopback, main, still_running


def test_loopback_hosts():
    assert all(is_loopback(h) for h in ("127.0.0.1", "localhost", "::1", "127.0.0.2"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "example.com", "::"))


def test_anonymous_mode_refuses_a_public_host(capsys, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "init", lambda *a, **k: pytest.fail("must refuse before starting Ray"))
    with pytest.raises(SystemExit) as info:
        main(["--host", "0.0.0.0"])
    assert info.value.code == 2
    assert "--require-keys" in capsys.readouterr().err


def test_python_m_serve_app_serves_behind_haproxy_and_stops_cleanly(tmp_path):
    """The README's start command as users run it (a process of its own, its own new Ray instance): the default
    switches are on (HAProxy in front where Ray bundles it), it classifies, and Ctrl-C stops it with status 0."""
    import json
    import re
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    from serve_app.switches import haproxy_available
    from tests.conftest import ROOT, free_port

    port = free_port()
    (tmp_path / "config.yaml").write_text("models: [all-MiniLM-L6-v2]\n")
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}
    env["PYTHONPATH"] = str(ROOT)
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "serve_app", "--config", str(tmp_path / "config.yaml"), "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
    )

    def get(path: str, body: dict | None = None) -> tuple[int, dict]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode() if body else None,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())

    try:
        deadline = time.monotonic() + 240
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            try:
                if get("/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(1)
        status, body = get("/v1/classify", {"model": "all-MiniLM-L6-v2", "input": ["will it rain tomorrow?"],
                                            "labels": ["weather", "music"]})
        assert status == 200 and body["data"][0]["prediction"] == "weather"
        started = (tmp_path / "serve.log").read_text()
        assert "'RAY_SERVE_THROUGHPUT_OPTIMIZED': '1'" in started
        if haproxy_available(env):
            assert "'RAY_SERVE_ENABLE_HA_PROXY': '1'" in started
            # HAProxy (not Ray's Python proxy) owns the port: its stats page answers on the free port chosen at start.
            stats_port = re.search(r"'RAY_SERVE_HAPROXY_STATS_PORT': '(\d+)'", started).group(1)
            assert stats_port != "8404"
            with urllib.request.urlopen(f"http://127.0.0.1:{stats_port}/stats", timeout=10) as r:
                assert r.status == 200 and b"HAProxy" in r.read()
        # the start-up's phases, for cold-start tracking: logged once serve.run returns, which can be a moment after
        # the app already answers /ready
        deadline = time.monotonic() + 60
        while "started in" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "started in" in (tmp_path / "serve.log").read_text()
        ray_processes = descendants(proc.pid)  # raylet, GCS, agents, workers, HAProxy
        assert ray_processes
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, (tmp_path / "serve.log").read_text()[-3000:]
        # Nothing of its Ray instance outlives it: Ray's agents would otherwise linger for a minute or two, holding
        # their ports, and the next start on this machine would wait for them (serve_app.run.stop_leftovers).
        left = still_running(ray_processes)
        assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes()[:80] for pid in left]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
