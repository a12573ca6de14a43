"""Admin command for API keys: ``./scripts/keys create|list|revoke|usage`` (``python -m serve_app.keys``).

Uses the service's config (``--config`` / ``CLASSIFIER_CONFIG`` / ``CLASSIFIER__*``) and so the same store. It
writes key records straight to the store; running services pick a new key up, or drop a revoked one, within
``accounts.key_cache_ttl_s`` (2 s by default), with no restart. ``create`` prints the key on its last line and
nowhere else; the store keeps only its hash, so a lost key cannot be shown again (revoke it, create another).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone

from classifiers.accounts.keys import AccountStore
from classifiers.storage.store import open_blob_store
from serve_app.config import load_config


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S") if t else "-"


def shown_location(store_url: str, cwd: str | None = None) -> str:
    """A local store under the current directory as the user wrote it (./data/classifiers), else as is."""
    if "://" in store_url:
        return store_url
    rel = os.path.relpath(store_url, cwd or os.getcwd())
    return store_url if rel.startswith("..") else f"./{rel}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="./scripts/keys", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML app config (default: $CLASSIFIER_CONFIG, else built-in defaults)")
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a key (a new account, or another key for --account)")
    create.add_argument("--name", required=True, help="who or what the key is for")
    create.add_argument("--tier", default="default", help="rate-limit tier (accounts.tiers in the config)")
    create.add_argument("--balance", type=int, help="tokens this key may use in total (default: unlimited)")
    create.add_argument("--admin", action="store_true", help="may call admin routes (/v1/stats)")
    create.add_argument("--account", help="add the key to this existing account UUID (default: a new account)")
    sub.add_parser("list", help="list keys (never the keys themselves)")
    revoke = sub.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    usage = sub.add_parser("usage", help="tokens and requests charged, per key (as of the last ledger flush)")
    usage.add_argument("key_id", nargs="?")
    opts = parser.parse_args(argv)

    cfg = load_config(config_file=opts.config)
    store = AccountStore(open_blob_store(cfg.state.store_url))

    if opts.command == "create":
        if opts.tier not in cfg.accounts.tiers:
            parser.error(f"unknown tier {opts.tier!r}; the config defines {sorted(cfg.accounts.tiers)}")
        if opts.balance is not None and opts.balance < 0:
            parser.error("--balance must be >= 0")
        rec, key = store.create_key(opts.name, tier=opts.tier, balance=opts.balance, admin=opts.admin, account_id=opts.account)
        print(f"created key {rec.key_id} for account {rec.account_id} (name {rec.name!r}, tier {rec.tier}"
              f"{', admin' if rec.admin else ''}{f', balance {rec.balance} tokens' if rec.balance is not None else ''}) "
              f"in {shown_location(cfg.state.store_url)}", file=sys.stderr)
        print("store it now: it is shown only once.", file=sys.stderr)
        print(key)
    elif opts.command == "list":
        print(f"{'KEY_ID':<13} {'ACCOUNT':<37} {'NAME':<20} {'TIER':<10} {'ADMIN':<5} {'BALANCE':>10} {'CREATED':<19} REVOKED")
        for r in store.list_keys():
            print(f"{r.key_id:<13} {r.account_id:<37} {r.name[:20]:<20} {r.tier:<10} {'yes' if r.admin else 'no':<5} "
                  f"{'-' if r.balance is None else r.balance:>10} {_when(r.created_at):<19} {_when(r.revoked_at)}")
    elif opts.command == "revoke":
        revoked = store.revoke(opts.key_id)
        if revoked is None:
            print(f"no key {opts.key_id!r}", file=sys.stderr)
            return 1
        print(f"revoked key {revoked.key_id} (account {revoked.account_id}) at {_when(revoked.revoked_at)}; services stop "
              f"accepting it within {cfg.accounts.key_cache_ttl_s:g}s")
    elif opts.command == "usage":
        entries = [store.read_ledger(opts.key_id) or {}] if opts.key_id else store.list_ledger()
        entries = [e for e in entries if e]
        if opts.key_id and not entries:
            print(json.dumps({"subject": opts.key_id, "tokens": 0, "requests": 0}))
        for e in entries:
            print(json.dumps(e, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
