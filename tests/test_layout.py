"""The code's layout rules, checked on the source with ``ast`` (nothing is imported):

* no file under classifiers/, serve_app/, deployments/, classifier_client/ or bench/ is above 600 lines;
* no function (def line to last line, methods and nested functions included) is above 80 lines in classifiers/,
  deployments/, serve_app/, classifier_client/, bench/ or tests/;
* the files of ``TEMPORARY_EXCEPTIONS`` are exempt from both while they wait for the split that their entry names,
  and the list holds only files that still break a rule;
* imports point downward only: the classifiers sub-packages are layered, bottom to top, as ``LAYERS`` (the order
  classifiers/__init__.py documents), and a module imports only from its own package or those below it;
  nothing in classifiers/ imports Ray, deployments or serve_app; deployments/ never imports serve_app.
  classifier_client/ (installable alone) imports nothing of ours but classifiers.protocol, and nothing of the
  service imports the client. Every import counts, also those inside functions;
* every package's __init__.py opens with a docstring that says what the package holds;
* every repository path cited in docs/, the README, docstrings, comments and configs exists (``classifiers/x.py``,
  ``tests/...``, a Markdown link relative to its document), and every dotted reference into our packages
  (``classifiers.embedding.local.LocalEmbedder``) names a module that exists and a name defined or imported there;
  exempt: paths outside the repository (``../shared/``, absolute paths), the outputs the tools generate
  (``GENERATED``) and state-store object keys (``*.npz``).
"""
from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80
FILE_ROOTS = ("classifiers", "serve_app", "deployments", "classifier_client", "bench")
FUNCTION_ROOTS = ("classifiers", "deployments", "serve_app", "classifier_client", "bench", "tests")
# Files that break the rules above until the work named beside each lands; clear an entry with that work (the
# last test below fails once an entry is no longer needed).
TEMPORARY_EXCEPTIONS: dict[str, str] = {}
CITING_SUFFIXES = (".py", ".md", ".yaml", ".yml", ".toml", ".html", ".cfg")
CITED_ROOTS = ("classifiers", "serve_app", "deployments", "classifier_client", "bench", "tests", "docs", "scripts",
               "deploy", "packaging")
SKIPPED_DIRS = {".venv", ".git", ".cache", "node_modules", "build", "dist", ".gpu_assets", "__pycache__"}
GENERATED = ("bench/results/", "docs/bench/gpu", "docs/benchmarks_gpu_suite.md")  # written by the tools that cite them
_CITED_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*\w)" % "|".join(CITED_ROOTS))
_CITED_DOTTED = re.compile(r"(?<![\w./-])((?:classifiers|serve_app|deployments|classifier_client|bench)(?:\.[A-Za-z_]\w*)+)")
LAYERS = ("protocol", "catalog", "request", "storage", "accounts", "images", "embedding", "zeroshot", "fewshot")
NOT_IN_CLASSIFIERS = ("ray", "deployments", "serve_app", "classifier_client")
OURS = ("classifiers", "deployments", "serve_app", "classifier_client", "bench", "tests")


def sources(*roots: str) -> Iterator[Path]:
    for root in roots:
        yield from sorted(p for p in (ROOT / root).rglob("*.py") if "__pycache__" not in p.parts)


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def module_parts(path: Path) -> tuple[str, ...]:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute dotted name) of everything the file imports, relative imports resolved. ``from classifiers
    import fewshot`` (a top-level package, where the name says the layer) yields ``classifiers.fewshot``."""
    parts = module_parts(path)
    package = parts if path.name == "__init__.py" else parts[:-1]
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - (node.level - 1)])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if "." in module:
                yield node.lineno, module
            else:
                yield from ((node.lineno, f"{module}.{alias.name}") for alias in node.names)


def long_files() -> list[str]:
    return [f"{rel(p)} is {n} lines" for p in sources(*FILE_ROOTS)
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES]


def long_functions() -> list[str]:
    found = []
    for path in sources(*FUNCTION_ROOTS):
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{rel(path)}:{node.lineno} {node.name}() is {length} lines")
    return found


def upward_imports() -> list[str]:
    found = []
    for path in sources("classifiers"):
        parts = module_parts(path)
        own = LAYERS.index(parts[1]) if len(parts) > 1 else None  # None: classifiers/__init__.py, above every layer
        for line, name in imported_modules(path):
            target = name.split(".")
            if target[0] in NOT_IN_CLASSIFIERS:
                found.append(f"{rel(path)}:{line} imports {name}")
            elif target[0] == "classifiers" and own is not None and len(target) > 1 and target[1] in LAYERS:
                if LAYERS.index(target[1]) > own:
                    found.append(f"{rel(path)}:{line} ({parts[1]}) imports {name} from a layer above it")
    for path in sources("deployments"):
        for line, name in imported_modules(path):
            if name.split(".")[0] in ("serve_app", "classifier_client"):
                found.append(f"{rel(path)}:{line} imports {name}")
    for path in sources("serve_app"):
        for line, name in imported_modules(path):
            if name.split(".")[0] == "classifier_client":
                found.append(f"{rel(path)}:{line} imports {name}")
    for path in sources("classifier_client"):
        for line, name in imported_modules(path):
            if name.split(".")[0] in OURS and not name.startswith(("classifier_client", "classifiers.protocol")):
                found.append(f"{rel(path)}:{line} (the client) imports {name}")
    return found


def not_excepted(found: list[str]) -> list[str]:
    return [f for f in found if f.split()[0].split(":")[0] not in TEMPORARY_EXCEPTIONS]


def test_no_file_is_above_600_lines():
    long = not_excepted(long_files())
    assert not long, f"split these files (at most {MAX_FILE_LINES} lines):\n" + "\n".join(long)


def test_no_function_is_above_80_lines():
    long = not_excepted(long_functions())
    assert not long, f"split these functions (at most {MAX_FUNCTION_LINES} lines):\n" + "\n".join(long)


def test_every_temporary_exception_is_still_needed():
    breaking = {f.split()[0].split(":")[0] for f in long_files() + long_functions()}
    stale = sorted(set(TEMPORARY_EXCEPTIONS) - breaking)
    assert not stale, "these files keep the rules now: remove them from TEMPORARY_EXCEPTIONS:\n" + "\n".join(stale)


def test_the_layers_are_every_classifiers_package_in_the_documented_order():
    packages = {p.parent.name for p in (ROOT / "classifiers").glob("*/__init__.py")}
    assert packages == set(LAYERS), "place every classifiers sub-package in LAYERS (and classifiers/__init__.py)"
    doc = ast.get_docstring(parse(ROOT / "classifiers" / "__init__.py")) or ""
    documented = re.search(r"bottom to top:\s*(.+?)\.\s", doc, re.S)
    assert documented, "classifiers/__init__.py documents the layering"
    assert tuple(re.split(r"\s*->\s*", " ".join(documented.group(1).split()))) == LAYERS


def test_imports_point_downward_only():
    bad = upward_imports()
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_import_scan_sees_relative_and_function_level_imports(tmp_path, monkeypatch):
    """The scanner itself: relative imports are resolved and imports inside functions are found."""
    pkg = tmp_path / "classifiers" / "catalog"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("from . import registry\nfrom .. import zeroshot\n")
    (pkg / "registry.py").write_text("from ..protocol import errors\n\ndef f():\n    from ..fewshot.learner import X\n"
                                     "    import ray.serve\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert [n for _, n in imported_modules(pkg / "__init__.py")] == ["classifiers.catalog",
                                                                     "classifiers.zeroshot"]
    names = [n for _, n in imported_modules(pkg / "registry.py")]
    assert {"classifiers.protocol", "classifiers.fewshot.learner", "ray.serve"} <= set(names)
    assert upward_imports() == [
        "classifiers/catalog/__init__.py:2 (catalog) imports classifiers.zeroshot from a layer above it",
        "classifiers/catalog/registry.py:4 (catalog) imports classifiers.fewshot.learner from a layer above it",
        "classifiers/catalog/registry.py:5 imports ray.serve",
    ]


def citing_files() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        rel_parts = path.relative_to(ROOT).parts
        if path.is_file() and not SKIPPED_DIRS.intersection(rel_parts) and path.name != "test_layout.py" and (
                path.suffix in CITING_SUFFIXES or rel_parts[0] == "scripts"):
            yield path


def _module_file(parts: list[str]) -> Path | None:
    base = ROOT.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def missing_dotted(ref: str) -> str | None:
    """Why ``pkg.module.name`` does not resolve, or None: the longest prefix that is a module or package, and the
    first name after it defined (or imported) in that module's source."""
    parts = ref.split(".")
    k = len(parts)
    while k and _module_file(parts[:k]) is None and not ROOT.joinpath(*parts[:k]).is_dir():
        k -= 1
    if k < 2 and len(parts) > 1:
        return "no such module"
    if k == len(parts) or (source := _module_file(parts[:k])) is None:
        return None
    if not re.search(rf"\b{re.escape(parts[k])}\b", source.read_text()):
        return f"no `{parts[k]}` in {rel(source)}"
    return None


def stale_citations() -> list[str]:
    found = []
    for path in citing_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            for m in _CITED_PATH.finditer(line):
                cited = m.group(1).rstrip(".")
                if cited.endswith(".npz") or cited.startswith(GENERATED) or any(c in cited for c in "*<{"):
                    continue
                if not (ROOT / cited).exists() and not (path.parent / cited).exists():
                    found.append(f"{rel(path)}:{number}: {cited}")
            for m in _CITED_DOTTED.finditer(line):
                why = missing_dotted(m.group(1))
                if why:
                    found.append(f"{rel(path)}:{number}: {m.group(1)} ({why})")
    return found


def test_every_cited_repository_path_exists():
    stale = stale_citations()
    assert not stale, "these cite paths or names that do not exist (moved? fix the reference):\n" + "\n".join(stale)


def test_the_citation_check_sees_moved_paths_and_names(tmp_path, monkeypatch):
    (tmp_path / "classifiers" / "pkg").mkdir(parents=True)
    (tmp_path / "classifiers" / "pkg" / "mod.py").write_text("class Here: ...\n")
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text(
        "`classifiers/pkg/mod.py`, classifiers/pkg/gone.py, classifiers.pkg.mod.Here, classifiers.pkg.mod.Gone,\n"
        "classifiers.nothing.x, ../shared/data/x.csv, /abs/classifiers/x.py, bench/results/gpu/r.json, ![p](pkg/)\n")
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    assert stale_citations() == ["docs/a.md:1: classifiers/pkg/gone.py",
                                 "docs/a.md:1: classifiers.pkg.mod.Gone (no `Gone` in classifiers/pkg/mod.py)",
                                 "docs/a.md:2: classifiers.nothing.x (no such module)"]


def import_graph(*roots: str) -> dict[str, set[str]]:
    """Module -> the modules of ours it imports (every import, TYPE_CHECKING and function-level ones included;
    ``from pkg import name`` counts as importing ``pkg.name`` where that is a module, else ``pkg``)."""
    files = {".".join(module_parts(p)): p for p in sources(*roots)}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        parts = module_parts(path)
        package = parts if path.name == "__init__.py" else parts[:-1]
        for node in ast.walk(parse(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    stem = ".".join(package[: len(package) - (node.level - 1)])
                    base = f"{stem}.{base}" if base else stem
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            else:
                continue
            graph[module].update(t for t in targets if t in files and t != module)
    return graph


def import_circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return circles


def test_no_import_circles():
    circles = import_circles(import_graph("classifiers", "deployments", "serve_app", "classifier_client"))
    assert not circles, "modules that import each other (move the shared piece down):\n" + "\n".join(map(str, circles))


def test_the_circle_check_finds_a_circle():
    assert import_circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_circles({"a": {"b"}, "b": set()}) == []


def test_every_package_opens_with_its_role():
    bare = [rel(p) for p in sources(*FILE_ROOTS) if p.name == "__init__.py" and not ast.get_docstring(parse(p))]
    assert not bare, "say what each package holds in its __init__.py docstring:\n" + "\n".join(bare)
