"""`./scripts/keys` output: the store is named as the user sees it (README, Accounts), not as one checkout's path."""
from __future__ import annotations

from serve_app.keys import main, shown_location


def test_a_store_under_the_current_directory_is_shown_relative(tmp_path):
    assert shown_location(str(tmp_path / "data" / "classifiers"), cwd=str(tmp_path)) == "./data/classifiers"
    assert shown_location("/elsewhere/store", cwd=str(tmp_path)) == "/elsewhere/store"
    assert shown_location("s3://bucket/prefix", cwd=str(tmp_path)) == "s3://bucket/prefix"


def test_create_prints_the_readme_lines(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLASSIFIER_CONFIG", raising=False)
    assert main(["create", "--name", "alice"]) in (0, None)
    out, err = capsys.readouterr()
    # Lines Ray forwards from other tests' replicas to this process's stderr are not the CLI's.
    first, second = [line for line in err.splitlines() if "(ServeReplica" not in line and "(ServeController" not in line]
    assert first.startswith("created key ") and first.endswith("(name 'alice', tier default) in ./data/classifiers")
    assert second == "store it now: it is shown only once."
    assert out.strip().startswith("rck_")
