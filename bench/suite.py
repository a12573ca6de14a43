"""One bench command: every system, the same load generator, one run; writes docs/benchmarks.md and docs/bench/*.png.

    ./scripts/bench            # the whole suite (about 20 minutes on 2 cores)
    ./scripts/bench --quick    # a ~5-minute subset (short inputs, concurrency 1/16/64, zero-shot + embeddings)
    ./scripts/bench --runs 3   # three full runs, then the median of each cell and of each target (bench/report.py)
    python bench/report.py --median a.json b.json c.json    # the same median from runs saved with --results

Systems, per embedded model (all measured with `wrk`, installed from Debian packages when missing):
  raw      the in-process encoder (classifiers.embedding.engines.load_encoder) at its best batch size: the limit;
  naive    bench/naive_server.py: one FastAPI/uvicorn process, the same zero-shot answer per request, no batching;
  peer     infinity-emb serving all-MiniLM-L6-v2 on /embeddings, from a venv the suite creates once under
           .cache/bench/infinity-venv (bench/machine.py: the pins and why; --infinity-python to use another);
  service  this service (Ray Serve, the app builder, anonymous, rate limits off): zero-shot classify, few-shot
           classify, train and /v1/embeddings.
Workloads: 1 and 32 inputs per request, short (CLINC150 utterances) and long (~400-token) inputs, at client
concurrency 1, 4, 16, 64. The `switches` system (default on) also measures Ray Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED
and RAY_SERVE_ENABLE_HA_PROXY, each alone and together (MiniLM, one short input per zero-shot request).

Each cell runs at least --seconds and until --min-requests requests have finished, at most --max-seconds; a cell
that ends with fewer is reported as not measured (bench/loadgen.py). The targets table is issue 30's
(bench/targets.py), MET / NOT MET per row.

The pieces: bench/loadgen.py (bodies, wrk cells, CPU per request), bench/peers.py (naive server, infinity-emb, the
service: start and stop), bench/machine.py (installs, a quiet machine), bench/report.py, bench/targets.py and
bench/plots.py (the doc); this file runs the stages.

Before each system it waits while other heavy work runs on the machine (pytest, another raylet, .ci/run):
numbers taken beside it are worthless. --no-wait skips that check.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import loadgen, machine, peers, report  # noqa: E402  (needs ROOT on sys.path)
from bench.loadgen import LABELS, Window, log, many_labels, payloads, post, texts, wrk  # noqa: E402
from serve_app.switches import default_switches  # noqa: E402  (needs ROOT on sys.path; imports no Ray)

MODELS = ["all-MiniLM-L6-v2", "multilingual-e5-small"]
SYSTEMS = ["raw", "naive", "infinity", "service", "switches", "coldstart"]


# -- the stages --------------------------------------------------------------------------------------------
def raw_rates(enc, pool: list[str], model: str, kind: str, budget_s: float) -> tuple[dict, float]:
    """Inputs/s of one encoder per batch size; and the p50 (ms) of one input."""
    rates, p50_single = {}, 0.0
    for bs in ([1, 8, 32, 64] if kind == "short" else [1, 8, 32]):
        done, start, i, single = 0, time.perf_counter(), 0, []
        while time.perf_counter() - start < budget_s:
            t0 = time.perf_counter()
            enc.encode([pool[(i + j) % len(pool)] for j in range(bs)], "input")
            if bs == 1:
                single.append(time.perf_counter() - t0)
            i += bs
            done += bs
        rates[bs] = done / (time.perf_counter() - start)
        log(f"  raw {model} {kind} batch={bs:3d}: {rates[bs]:7.1f} inputs/s")
        if bs == 1:
            p50_single = 1000 * statistics.median(single)
    return rates, p50_single


def raw(model: str, kinds: list[str], budget_s: float) -> dict:
    """Inputs/s of the in-process encoder per batch size, per input length; best batch; p50 of one input."""
    from classifiers.catalog.registry import build_registry
    from classifiers.embedding.engines import load_encoder

    gpu = peers.gpu_mode() and peers.torch_model(model)
    enc = load_encoder(build_registry([model]).get(model), **({"device": "cuda", "dtype": "float16"} if gpu else {}))
    out = {}
    for kind in kinds:
        pool = texts(kind, 256)
        enc.encode(pool[:8], "input")
        tokens = statistics.mean(enc.count_tokens(pool[:64], "input"))
        rates, p50_single = raw_rates(enc, pool, model, kind, budget_s)
        best = max(rates, key=lambda b: rates[b])
        out[kind] = {"rates": rates, "best_batch": best, "best": rates[best], "p50_single_ms": p50_single,
                     "tokens": tokens}
    del enc
    return out


def naive(results: list, model: str, args) -> None:
    with peers.naive_server(model) as (proc, url):
        loadgen.run_cells(results, "naive", model, url, ["zeroshot"], args, root=proc.pid)


def infinity(results: list, args, notes: dict) -> None:
    py = args.infinity_python
    if not py or not Path(py).exists():
        notes["infinity"] = f"not measured: no infinity-emb interpreter ({args.infinity_problem or py!r})"
        return
    try:
        with peers.infinity_server(py) as (proc, url):
            notes["infinity"] = f"measured: infinity-emb from {py}, weights {peers.minilm_weights()}"
            loadgen.run_cells(results, "infinity", peers.MINILM, url, ["peer"], args, root=proc.pid)
    except peers.PeerError as err:
        notes["infinity"] = f"not measured: {err}"
        log(f"  infinity-emb: {err}")


def make_classifiers(url: str, model: str, n: int = 8) -> list[str]:
    pool = texts("short", 64)
    ids = []
    for k in range(n):
        body = {"model": model, "access": "private",
                "input": [{"text": pool[(k * 6 + j) % 64], "label": LABELS[j % 3]} for j in range(6)]}
        status, resp, _ = post(url + "/v1/train", body)
        if status != 200:
            raise RuntimeError(f"/v1/train answered {status}")
        ids.append(resp["classifier_id"])
    return ids


def one_input_cells(results: list, model: str, url: str, window: Window, name: str, bodies: list[dict]) -> None:
    """Cells of one-short-input zero-/few-shot requests at 1 and 16 clients (after 3 warm-up requests)."""
    for b in bodies[:3]:
        post(url + "/v1/classify", b)
    for conc in (1, 16):
        r = wrk(url, "/v1/classify", bodies, conc, window)
        row = loadgen.cell_row("service", name, model, "short", 1, conc, r)
        results.append(row)
        log(loadgen.describe(row))


def label_cost(results: list, model: str, url: str, args) -> None:
    """Zero-shot with 256 labels vs 2 (one short input per request, label vectors cached after the warm-up)."""
    pool = texts("short", 128)
    for n in (2, 256):
        labels = many_labels(n)
        one_input_cells(results, model, url, args.window, f"zeroshot-{n}labels",
                        [{"model": model, "input": [t], "labels": labels} for t in pool])


def multi_label_cost(results: list, model: str, url: str, args, ids: list[str] | None) -> None:
    """The same one-short-input requests with and without `multi_label` (zero-shot with 16 labels, and few-shot
    when classifiers exist): the per-label probabilities and thresholds must cost at most 1.1x (issue 28)."""
    pool = texts("short", 128)
    labels = many_labels(16)
    kinds = {"zeroshot": [{"model": model, "input": [t], "labels": labels} for t in pool]}
    if ids:
        kinds["fewshot"] = [{"classifier_id": ids[i % len(ids)], "input": [t]} for i, t in enumerate(pool)]
    for kind, plain in kinds.items():
        for mode, bodies in (("single", plain), ("multi", [{**b, "multi_label": True} for b in plain])):
            one_input_cells(results, model, url, args.window, f"{kind}-{mode}-label", bodies)


def learning_cost(results: list, model: str, url: str, args, ids: list[str]) -> None:
    """Few-shot one-short-input requests on classifiers with `learn_from_inputs` off and then on (the same owner,
    so every input is queued and learned after its answer): the answer must not wait for learning (issue 29)."""
    pool = texts("short", 128)
    learning = make_classifiers(url, model)
    for cid in learning:
        status, _, _ = post(url + "/v1/train", {"classifier_id": cid, "learn_from_inputs": True})
        if status != 200:
            raise RuntimeError(f"/v1/train (learn_from_inputs) answered {status}")
    for mode, cids in (("off", ids), ("on", learning)):
        one_input_cells(results, model, url, args.window, f"fewshot-learning-{mode}",
                        [{"classifier_id": cids[i % len(cids)], "input": [t]} for i, t in enumerate(pool)])


def service(results: list, model: str, args) -> None:
    # The shipped defaults, as `python -m serve_app` sets them (serve_app/switches.py), plus the quick drain.
    with peers.service(model, {**default_switches(os.environ), **peers.SWITCH_COMMON_ENV}) as (proc, url):
        ids = make_classifiers(url, model) if {"fewshot", "train"} & set(args.endpoints) else None
        loadgen.run_cells(results, "service", model, url, args.endpoints, args, ids, root=proc.pid)
        if "zeroshot" in args.endpoints:
            label_cost(results, model, url, args)
            multi_label_cost(results, model, url, args, ids)
        if ids and "fewshot" in args.endpoints:
            learning_cost(results, model, url, args, ids)


def switch_cells(results: list, name: str, url: str, args) -> None:
    model = peers.MINILM
    bodies = payloads("zeroshot", model, 1, "short")
    for _ in range(3):
        post(url + "/v1/classify", bodies[0])
    _, _, idle = post(url + "/v1/classify", bodies[0])
    for conc in args.switch_concurrency:
        r = wrk(url, "/v1/classify", bodies, conc, Window(args.switch_seconds, args.min_requests, args.max_seconds))
        row = loadgen.cell_row(f"switch:{name}", "zeroshot", model, "short", 1, conc, r)
        results.append(row)
        log(loadgen.describe(row))
        loadgen.drain(url, "/v1/classify", bodies[0], idle)


def switches(results: list, args, notes: dict) -> None:
    for name, env in peers.SWITCHES.items():
        machine.wait_idle(not args.no_wait)
        log(f"== Ray switches: {name} ==")
        try:
            proc, url = peers.start_service(peers.MINILM, {**peers.SWITCH_COMMON_ENV, **env})
        except Exception as err:  # noqa: BLE001
            notes[f"switch {name}"] = f"did not start: {err}"
            log(f"  {name}: did not start: {err}")
            continue
        try:
            hap = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True).stdout.split()
            listener = subprocess.run(["ss", "-ltnpH", f"sport = :{url.rsplit(':', 1)[1]}"], capture_output=True,
                                      text=True).stdout.split("users:")[-1].strip()
            notes[f"switch {name}"] = (f"env {env or '{}'}; haproxy processes: {len(hap)}; "
                                       f"the HTTP port is served by {listener or '?'}")
            log(f"  {notes[f'switch {name}']}")
            switch_cells(results, name, url, args)
        finally:
            peers.stop(proc)


def cold_start(res: dict) -> None:
    """`python -m serve_app` (both embedded models, the shipped defaults) from launch to /ready answering 200."""
    port = peers.free_port()
    with tempfile.TemporaryDirectory() as cwd:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = str(ROOT)
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "serve_app", "--port", str(port)], cwd=cwd, env=env,
                                stdout=open(f"/tmp/bench-coldstart-{port}.log", "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        try:
            peers.wait_ready(f"http://127.0.0.1:{port}", proc, 240)
            res["cold_start_s"] = time.perf_counter() - started
            log(f"  cold start: {res['cold_start_s']:.1f} s to /ready")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()


# -- one run -----------------------------------------------------------------------------------------------
def run_once(args, command: str, results_path: str) -> dict:
    """Every stage of one run, in order; the results so far are saved after each stage."""
    started = time.time()
    res = {"started": time.strftime("%Y-%m-%d %H:%M"), "command": command, "machine": machine.machine(), "rows": [],
           "raw": {}, "notes": {}, "args": {k: v for k, v in vars(args).items() if not k.startswith("_")
                                            and k not in ("window", "infinity_problem")}}

    def save():
        res["took_min"] = (time.time() - started) / 60
        Path(results_path).write_text(json.dumps(res, indent=1))

    def stage(title: str, measure) -> None:
        """One system: wait for a quiet machine, measure, save what we have so far."""
        machine.wait_idle(not args.no_wait)
        log(f"== {title} ==")
        measure()
        save()

    try:
        for model in args.models:
            if "raw" in args.systems:
                stage(f"raw {model}", lambda model=model: res["raw"].update({model: raw(model, args.lengths, args.raw_seconds)}))
            if "naive" in args.systems:
                stage(f"naive {model}", lambda model=model: naive(res["rows"], model, args))
            if "infinity" in args.systems and model == peers.MINILM:
                stage("infinity-emb", lambda: infinity(res["rows"], args, res["notes"]))
            if "service" in args.systems:
                stage(f"service {model}", lambda model=model: service(res["rows"], model, args))
        if "switches" in args.systems:
            switches(res["rows"], args, res["notes"])
        if "coldstart" in args.systems:
            stage("cold start", lambda: cold_start(res))
    finally:
        save()
        log(f"results: {results_path}")
    return res


# -- main --------------------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="~5-minute subset: short inputs, concurrency 1/16/64, "
                    "zero-shot and embeddings, 4 s cells")
    ap.add_argument("--models", nargs="+", default=MODELS)
    ap.add_argument("--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS)
    ap.add_argument("--endpoints", nargs="+", default=None, choices=["zeroshot", "fewshot", "train", "embeddings"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--lengths", nargs="+", default=None, choices=["short", "long"])
    ap.add_argument("--concurrency", nargs="+", type=int, default=None)
    ap.add_argument("--seconds", type=float, default=None, help="least wrk time per cell (default 6, --quick 4)")
    ap.add_argument("--min-requests", type=int, default=20,
                    help="a cell runs until this many requests have finished (and at least --seconds); fewer by "
                    "--max-seconds: reported as not measured")
    ap.add_argument("--max-seconds", type=float, default=60, help="the most a cell runs")
    ap.add_argument("--max-backlog", type=float, default=60,
                    help="skip a cell when concurrency x (idle seconds of one request) is above this")
    ap.add_argument("--raw-seconds", type=float, default=2.5, help="time per raw batch size")
    ap.add_argument("--switch-concurrency", nargs="+", type=int, default=[16, 64])
    ap.add_argument("--switch-seconds", type=float, default=8)
    ap.add_argument("--infinity-python", default=os.environ.get("INFINITY_PYTHON"),
                    help="python of a venv with infinity-emb (default: the suite installs one in "
                    ".cache/bench/infinity-venv; never this project's .venv)")
    ap.add_argument("--install-only", action="store_true", help="install wrk, haproxy and infinity-emb, then stop")
    ap.add_argument("--runs", type=int, default=1, help="full runs one after another; the doc shows their median")
    ap.add_argument("--no-wait", action="store_true", help="do not wait for other heavy work to finish")
    ap.add_argument("--results", default="/tmp/bench-suite-results.json",
                    help="raw results (JSON); with --runs N, the median, and each run's in RESULTS.runK.json")
    ap.add_argument("--render-only", action="store_true", help="rewrite the doc and plots from --results")
    ap.add_argument("--no-doc", action="store_true", help="measure and print; do not touch docs/")
    ap.add_argument("--gpu", action="store_true",
                    help="on a GPU node: torch models on fractional GPUs in float16 (GPU_EMBEDDER), 4 ingress replicas; "
                    "writes docs/benchmarks_gpu_suite.md and docs/bench/gpu/")
    return ap


def defaults(args) -> None:
    """The --quick subset's and the full suite's defaults, for what the command line left open."""
    args.endpoints = args.endpoints or (["zeroshot", "embeddings"] if args.quick else ["zeroshot", "fewshot", "train", "embeddings"])
    args.lengths = args.lengths or (["short"] if args.quick else ["short", "long"])
    args.concurrency = args.concurrency or ([1, 16, 64] if args.quick else [1, 4, 16, 64])
    args.seconds = args.seconds or (4 if args.quick else 6)
    args.window = Window(args.seconds, args.min_requests, args.max_seconds)


def install(args) -> None:
    """What the chosen systems need: wrk, haproxy (the switches), and infinity-emb in its own venv."""
    machine.ensure_debian("wrk", "wrk")
    if "switches" in args.systems:
        machine.ensure_debian("haproxy", "haproxy")
    args.infinity_problem = None
    if "infinity" in args.systems and peers.MINILM in args.models and not args.infinity_python:
        try:
            args.infinity_python = machine.ensure_infinity()
        except (subprocess.CalledProcessError, OSError) as err:
            args.infinity_problem = f"installing infinity-emb failed: {err}"
            log(f"!! {args.infinity_problem}")


def main() -> None:
    args = parser().parse_args()
    command = "./scripts/bench " + " ".join(sys.argv[1:])
    if args.gpu:
        os.environ["BENCH_GPU"] = "1"  # inherited by the service and naive children
    if args.render_only:
        res = json.loads(Path(args.results).read_text())
        report.publish(res, res.get("command", command), args.gpu)
        return
    defaults(args)
    install(args)
    if args.install_only:
        log(f"installed: wrk{', haproxy' if 'switches' in args.systems else ''}; infinity-emb: "
            f"{args.infinity_python or args.infinity_problem or 'not needed'}")
        return
    paths = [args.results] if args.runs == 1 else [str(Path(args.results).with_suffix(f".run{k + 1}.json"))
                                                   for k in range(args.runs)]
    runs = []
    for k, path in enumerate(paths):
        if args.runs > 1:
            log(f"=== run {k + 1} of {args.runs} ===")
        runs.append(run_once(args, command, path))
    res = report.median_results(runs)
    if args.runs > 1:
        Path(args.results).write_text(json.dumps(res, indent=1))
        log(f"median of {args.runs} runs: {args.results}")
    print("\n".join(report.target_rows(res)))
    if not args.no_doc:
        for p in report.publish(res, command, args.gpu):
            log(f"wrote {p}")


if __name__ == "__main__":
    main()
