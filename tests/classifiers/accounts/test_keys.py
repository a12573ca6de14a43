"""Keys: format, hashing, what the store holds, and the header rules (no Ray)."""
from __future__ import annotations

import asyncio

import pytest

from classifiers.accounts.keys import KEY_PATTERN, AccountStore, Authenticator, Principal, hash_key, parse_bearer
from classifiers.protocol.errors import InvalidApiKey, InvalidAuthFormat, LocalClientsOnly, MissingApiKey
from classifiers.storage.store import ANONYMOUS_OWNER, LocalDirStore


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def store(tmp_path):
    return AccountStore(LocalDirStore(tmp_path))


def test_keys_are_prefixed_random_and_stored_only_as_a_hash(store, tmp_path):
    rec, key = store.create_key("alice", tier="default", balance=100)
    rec2, key2 = store.create_key("bob")
    assert KEY_PATTERN.fullmatch(key) and key.startswith(f"rck_{rec.key_id}_") and key != key2
    assert len(key.split("_", 2)[2]) == 43  # 256 random bits, URL-safe base64
    assert rec.account_id != rec2.account_id and rec.key_hash == hash_key(key)
    on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    assert key.encode() not in on_disk and key.split("_", 2)[2].encode() not in on_disk
    assert store.read_key(rec.key_id).matches(key) and not store.read_key(rec.key_id).matches(key2)


def test_another_key_for_an_existing_account_shares_it(store):
    rec, _ = store.create_key("alice")
    rec2, _ = store.create_key("alice-laptop", account_id=rec.account_id)
    assert rec2.account_id == rec.account_id and rec2.key_id != rec.key_id


def test_header_rules():
    assert parse_bearer("Bearer abc") == "abc" and parse_bearer("bearer  abc ") == "abc"
    for missing in (None, "", "   ", "Bearer", "Bearer "):
        with pytest.raises(MissingApiKey):
            parse_bearer(missing)
    for bad in ("Basic dXNlcjpwYXNz", "Token abc", "Bearer a b", "abc"):
        with pytest.raises(InvalidAuthFormat):
            parse_bearer(bad)


def test_authenticator_accepts_a_live_key_and_refuses_unknown_forged_and_revoked(store):
    now = [0.0]
    auth = Authenticator(store, require_keys=True, ttl_s=2.0, clock=lambda: now[0])
    rec, key = store.create_key("alice", tier="default")
    p = run(auth.authenticate(f"Bearer {key}", "10.0.0.1"))
    assert p == Principal(rec.account_id, rec.key_id, f"account:{rec.account_id}:default", "default", False, None)
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")  # right id, wrong secret
    for bad in (forged, "rck_000000000000_" + "A" * 43, "sk-not-ours", "rck_../../etc_" + "A" * 43):
        with pytest.raises(InvalidApiKey) as info:
            run(auth.authenticate(f"Bearer {bad}", None))
        assert bad not in info.value.detail and key not in info.value.detail
    store.revoke(rec.key_id)
    assert run(auth.authenticate(f"Bearer {key}", None)).account_id == rec.account_id  # cached for ttl_s
    now[0] = 2.5
    with pytest.raises(InvalidApiKey):
        run(auth.authenticate(f"Bearer {key}", None))


def test_a_key_created_after_a_failed_lookup_works_within_the_ttl(store):
    now = [0.0]
    auth = Authenticator(store, require_keys=True, ttl_s=2.0, clock=lambda: now[0])
    rec, key = store.create_key("alice")
    store.blobs.delete(f"accounts/keys/{rec.key_id}.json")
    with pytest.raises(InvalidApiKey):
        run(auth.authenticate(f"Bearer {key}", None))
    store.write_key(rec)
    now[0] = 2.1
    assert run(auth.authenticate(f"Bearer {key}", None)).subject == rec.key_id


def test_anonymous_mode_ignores_the_header_and_limits_by_ip(store):
    auth = Authenticator(store, require_keys=False)
    p = run(auth.authenticate("Bearer ", "10.1.2.3"))
    assert p.account_id == ANONYMOUS_OWNER and p.rate_subject == "ip:10.1.2.3" and p.admin
    assert run(auth.authenticate("garbage", "10.9.9.9")).rate_subject == "ip:10.9.9.9"


def test_handle_callers_name_an_account_by_uuid():
    p = Principal.of_account("3f2504e0-4f89-41d3-9a0c-0305e82c3301")
    assert p.account_id == "3f2504e0-4f89-41d3-9a0c-0305e82c3301" and p.subject.startswith("account-")
    with pytest.raises(ValueError):
        Principal.of_account("../../x")


def test_anonymous_mode_for_this_machine_refuses_other_hosts(store):
    """Without keys and without allow_anonymous the service answers loopback clients only: Ray Serve may listen on
    other interfaces too (HAProxy mode), and those must not be an open door."""
    auth = Authenticator(store, require_keys=False, local_only=True)
    for ip in ("127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1", "localhost", None):
        assert run(auth.authenticate(None, ip)).account_id == ANONYMOUS_OWNER
    for ip in ("10.1.2.3", "192.0.2.2", "::ffff:10.0.0.1", "2001:db8::1", "not-an-ip"):
        with pytest.raises(LocalClientsOnly) as err:
            run(auth.authenticate("Bearer ", ip))
        assert err.value.status == 403 and err.value.code == "AUTHZ_INSUFFICIENT_PERMISSIONS"
    # With keys required, local_only has no say: keys decide.
    keyed = Authenticator(store, require_keys=True, local_only=True)
    with pytest.raises(MissingApiKey):
        run(keyed.authenticate(None, "127.0.0.1"))
