"""What both clients share: settings from arguments and the environment, the Idempotency-Key of every train call."""
from __future__ import annotations

from classifier_client import Client


def test_train_calls_carry_a_fresh_idempotency_key_unless_given():
    c = Client("http://example.invalid", api_key="")
    k1 = c._train_call([("a", "x")], None, None, "private", 10, None, None).headers["Idempotency-Key"]
    k2 = c._train_call([("a", "x")], None, None, "private", 10, None, None).headers["Idempotency-Key"]
    assert k1 != k2 and len(k1) == 32
    assert c._train_call([("a", "x")], None, None, "private", 10, None, "mine").headers == {"Idempotency-Key": "mine"}
    c.close()


def test_client_settings_from_arguments_and_environment(monkeypatch):
    monkeypatch.setenv("CLASSIFIER_API_KEY", "rck_env")
    monkeypatch.setenv("CLASSIFIER_URL", "http://env:9/")
    c = Client()
    assert c.base_url == "http://env:9" and c._headers["Authorization"] == "Bearer rck_env"
    c.close()
    c = Client("http://arg:1", api_key="")  # "" sends no key even with the variable set
    assert c.base_url == "http://arg:1" and "Authorization" not in c._headers
    c.close()
    monkeypatch.delenv("CLASSIFIER_URL")
    monkeypatch.delenv("CLASSIFIER_API_KEY")
    c = Client()
    assert c.base_url == "http://127.0.0.1:8000" and c.api_key is None and "rck" not in repr(c)
    c.close()
