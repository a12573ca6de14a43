"""`python -m serve_app`'s start-up rules that need no Ray: anonymous mode only on loopback unless allowed."""
from __future__ import annotations

import pytest

from serve_app.__main__ import is_loopback, main


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
