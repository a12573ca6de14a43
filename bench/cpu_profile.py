"""The CPU one request costs, by role, for one workload: the service as the bench suite starts it, one wrk cell.

    python bench/cpu_profile.py                        # MiniLM, 1 short input, 5 labels, 16 clients, 15 s
    python bench/cpu_profile.py --repeat 3 --json /tmp/cpu.json
    python bench/cpu_profile.py --py-spy ingress       # also a py-spy profile of the ingress replica (its own cell)
    python bench/cpu_profile.py --py-spy embedder --top 40
    python bench/cpu_profile.py --cold-start 3          # python -m serve_app to /ready, 3 times, phase by phase

Run it as ``flock /tmp/e2e.lock python bench/cpu_profile.py ...`` beside other heavy work: it starts Ray.

The service is started exactly as ``bench/suite.py`` does (``bench.peers.start_service``: the shipped switches of
``serve_app.switches.default_switches`` plus the suite's quick drain, rate limits off), warmed up, then measured
with ``bench.loadgen.measured_wrk``: CPU seconds of every process of the service's tree from /proc
(``bench/cpu.py``), the embedder's split into model calls (timed in the replica, ``/v1/stats``) and the rest.
Printed per request in milliseconds: proxy (HAProxy and Ray's proxy actor), ingress, embedder model, embedder
other, state (shards, accounts actor), ray (raylet, GCS, controller, ...), other, and "outside the model"
(everything but the embedder's model calls). The largest processes are listed too, and the CPU the rest of the
machine used meanwhile (wrk and anything else: a busy machine makes the numbers noisy).

``--py-spy ROLE`` records the replica of that role (``ingress`` or ``embedder``) with ``py-spy record
--nonblocking`` during a separate cell (py-spy's own CPU would skew the measured one) and prints the frames with
the most samples, by own time (leaf) and by total time (anywhere on the stack), and keeps the speedscope file;
``--py-spy ServeController`` (any part of a process title) profiles that process instead. ``--idle S`` also measures
the service's CPU with no load (its background work, per role and process).

``--floor`` measures a no-op app of the same shape instead (HTTP -> FastAPI ingress -> handle -> ``@serve.batch``
deployment, at about the same request rate): what Ray Serve itself costs per request, which no change of this
service's code goes under.

``--cold-start N`` times ``python -m serve_app`` (the shipped defaults, both embedded models) from launch to /ready,
N times, with its phases from the runner's log (imports, ray.init, serve.start, deploy, then /ready), each
deployment's replica start from the controller's log, and whether Ray's dashboard agent found its port taken by
an earlier instance's (a start then waits ~3.5 s for it); ``--clean`` waits for that port first.
"""
from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import cpu  # noqa: E402  (needs ROOT on sys.path)
from bench.loadgen import measured_wrk, model_cpu_s, payloads, post, wrk  # noqa: E402
from bench.machine import ensure_debian  # noqa: E402
from bench.peers import SWITCH_COMMON_ENV, spawn, start_service, stop, wait_ready  # noqa: E402
from bench.peers import free_port as suite_free_port  # noqa: E402
from serve_app.switches import default_switches  # noqa: E402  (imports no Ray)

PATH = "/v1/classify"
ORDER = ("proxy", "ingress", "model", "embedder", "state", "ray", "other")
LABEL = {"proxy": "proxy (HAProxy + Ray proxy)", "ingress": "ingress", "model": "embedder: model calls",
         "embedder": "embedder: other", "state": "state/accounts actors", "ray": "Ray's own processes",
         "other": "other (unattributed)"}


def busy_seconds() -> float:
    """CPU seconds the whole machine has been busy (every core, /proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / cpu.CLOCK_TICKS


def process_name(cmdline: str) -> str:
    """A short, stable name for one process of the tree (Ray's process titles, else the program)."""
    words = cmdline.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    base = os.path.basename(words[0])
    if base.startswith("python"):
        script = next((w for w in words[1:] if w.endswith(".py")), None)
        return f"python {os.path.basename(script)}" if script else base
    return base


def per_process_ms(before: cpu.Snapshot, after: cpu.Snapshot, requests: int) -> dict[str, float]:
    out: dict[str, float] = collections.defaultdict(float)
    for pid, ticks in after.ticks.items():
        used = max(0, ticks - before.ticks.get(pid, 0)) / cpu.CLOCK_TICKS
        if used:
            out[process_name(cpu._cmdline(pid))] += 1000 * used / max(1, requests)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def thread_ticks(pid: int) -> dict[str, int]:
    """CPU ticks of each thread of one process, by thread name (/proc/PID/task/TID/comm; same names summed)."""
    out: dict[str, int] = collections.defaultdict(int)
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return {}
    for tid in tids:
        try:
            raw = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        out[name] += int(fields[11]) + int(fields[12])
    return out


def replica_pids(snap: cpu.Snapshot) -> dict[str, int]:
    """The busiest replica process of each of the ingress and embedder roles."""
    out = {}
    for role in ("ingress", "embedder"):
        pids = [p for p, r in snap.roles.items() if r == role and "ServeReplica" in cpu._cmdline(p)]
        if pids:
            out[role] = max(pids, key=lambda p: snap.ticks[p])
    return out


def one_cell(url: str, bodies: list[dict], concurrency: int, seconds: float, root: int) -> dict:
    """``measured_wrk`` for one cell, plus the per-process and per-thread split and the machine's CPU outside the
    service."""
    busy0, snap0 = busy_seconds(), cpu.snapshot(root)
    replicas = replica_pids(snap0)
    threads0 = {role: thread_ticks(pid) for role, pid in replicas.items()}
    r = measured_wrk(url, PATH, bodies, concurrency, seconds, root, True)
    threads1 = {role: thread_ticks(pid) for role, pid in replicas.items()}
    snap1, busy1 = cpu.snapshot(root), busy_seconds()
    r["threads_ms"] = {
        role: dict(sorted(((name, 1000 * (t - threads0[role].get(name, 0)) / cpu.CLOCK_TICKS / max(1, r["requests"]))
                           for name, t in threads1[role].items() if t > threads0[role].get(name, 0)),
                          key=lambda kv: -kv[1]))
        for role in replicas
    }
    tree_s = sum(max(0, t - snap0.ticks.get(p, 0)) for p, t in snap1.ticks.items()) / cpu.CLOCK_TICKS
    r["processes_ms"] = per_process_ms(snap0, snap1, r["requests"])
    r["elsewhere_cpu_s"] = max(0.0, busy1 - busy0 - tree_s)  # wrk, the driver, and anything else on the machine
    r["window_s"] = seconds
    return r


def outside_model(c: dict) -> float | None:
    return c["total"] - c["model"] if "model" in c else None


def report(cells: list[dict], title: str) -> None:
    print(f"\n== {title}: {len(cells)} cell(s) ==")
    head = f"{'CPU ms / request':32s}" + "".join(f"{'cell ' + str(i + 1):>10s}" for i in range(len(cells)))
    print(head + (f"{'mean':>10s}" if len(cells) > 1 else ""))

    def row(label: str, values: list[float | None], fmt: str = "{:10.2f}") -> None:
        shown = [v for v in values if v is not None]
        mean = [sum(shown) / len(shown)] if len(cells) > 1 and shown else []
        print(f"{label:32s}" + "".join(fmt.format(v) if v is not None else f"{'-':>10s}" for v in values + mean))

    for role in ORDER:
        row(LABEL[role], [c["cpu_ms"].get(role) for c in cells])
    row("total", [c["cpu_ms"]["total"] for c in cells])
    row("outside the model", [outside_model(c["cpu_ms"]) for c in cells])
    row("requests/s", [c["rps"] for c in cells], "{:10.1f}")
    row("p50 ms", [c["p50"] for c in cells], "{:10.1f}")
    row("p99 ms", [c["p99"] for c in cells], "{:10.1f}")
    row("errors (non-2xx/timeouts/sock)", [float(c["non2xx"] + c["timeouts"] + c["sock"]) for c in cells], "{:10.0f}")
    row("CPU elsewhere, cores (wrk...)", [c["elsewhere_cpu_s"] / c["window_s"] for c in cells])
    print("largest processes (ms/request, last cell):")
    for name, ms in list(cells[-1]["processes_ms"].items())[:12]:
        print(f"  {ms:7.2f}  {name}")
    for role, threads in cells[-1].get("threads_ms", {}).items():
        print(f"threads of the {role} replica (ms/request, last cell): "
              + ", ".join(f"{name} {ms:.2f}" for name, ms in list(threads.items())[:8]))


def idle_cpu(root: int, seconds: float, cells: list[dict]) -> dict:
    """The service's CPU with no requests at all (its background work: control loops, health checks, metrics),
    per role in ms per second, and what that is per request at the measured cells' mean rate."""
    time.sleep(2)  # the last cell's stragglers
    before = cpu.snapshot(root)
    time.sleep(seconds)
    after = cpu.snapshot(root)
    per_s = {role: 1000 * s / seconds for role, s in cpu.cpu_by_role(before, after).items()}
    per_s["total"] = sum(per_s.values())
    rps = sum(c["rps"] for c in cells) / len(cells)
    procs = {name: ms * 1 / seconds for name, ms in per_process_ms(before, after, 1).items()}
    print(f"\n== idle: the service's CPU with no load ({seconds:g} s) ==")
    print(f"{'role':32s}{'ms per second':>14s}{'ms/request at ' + format(rps, '.0f') + '/s':>22s}")
    for role in (*cpu.ROLES, "total"):
        print(f"{role:32s}{per_s[role]:14.1f}{per_s[role] / rps:22.2f}")
    print("largest processes at idle (ms per second):")
    for name, ms in list(procs.items())[:12]:
        print(f"  {ms:7.1f}  {name}")
    return {"ms_per_s": per_s, "processes_ms_per_s": procs}


# -- py-spy ---------------------------------------------------------------------------------------------------
def pid_of_role(root: int, role: str) -> int:
    """The busiest replica of a role (ingress, embedder), else the busiest process whose title contains ``role``
    (e.g. ServeController, HAProxyManager, DashboardAgent)."""
    snap = cpu.snapshot(root)
    if role in ("ingress", "embedder"):
        pids = [p for p, r in snap.roles.items() if r == role and "ServeReplica" in cpu._cmdline(p)]
    else:
        pids = [p for p in snap.ticks if role in cpu._cmdline(p)]
    if not pids:
        raise SystemExit(f"no {role} process in the service's process tree")
    return max(pids, key=lambda p: snap.ticks[p])


def py_spy_cell(url: str, bodies: list[dict], args, root: int, out_dir: Path) -> None:
    """One wrk cell with a py-spy sampler on the busiest replica of each role in ``args.py_spy``."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("py-spy is not installed (pip install py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    duration = str(max(1, round(args.seconds)))
    recs, raws = [], []
    for role in args.py_spy:
        pid = pid_of_role(root, role)
        raw, scope = out_dir / f"{role}.txt", out_dir / f"{role}.speedscope.json"
        common = ["--pid", str(pid), "--rate", str(args.rate), "--duration", duration]
        # --native (C frames too) needs py-spy to pause the process for each sample; without it, --nonblocking
        common.append("--native" if args.native else "--nonblocking")
        print(f"\n== py-spy on the {role} replica (pid {pid}), {duration} s at {args.rate} Hz ==")
        recs.append(subprocess.Popen([py_spy, "record", *common, "--format", "raw", "-o", str(raw)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        if args.speedscope:  # a second sampler doubles py-spy's cost: only when asked
            recs.append(subprocess.Popen([py_spy, "record", *common, "--format", "speedscope", "-o", str(scope)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        raws.append((role, raw, scope))
    time.sleep(0.5)
    r = wrk(url, PATH, bodies, args.concurrency, args.seconds)
    for rec in recs:
        _, err = rec.communicate(timeout=60)
        if rec.returncode != 0:
            print(f"  py-spy failed ({rec.returncode}): {err.decode(errors='replace')[-400:]}")
    print(f"  requests/s while sampled: {r['rps']:.1f} (py-spy's own CPU slows the service)")
    for role, raw, scope in raws:
        if raw.exists():
            print(f"\n-- {role} --")
            summarise(raw, args.top)
            print(f"  collapsed stacks: {raw}" + (f"; speedscope: {scope}" if args.speedscope else ""))


def frame_label(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (file.py)`` (line numbers split one function into many rows)."""
    if " (" in frame and frame.endswith(")"):
        func, where = frame[:-1].split(" (", 1)
        where = where.rsplit(":", 1)[0]
        parts = where.split("/")
        if "site-packages" in parts:
            parts = parts[parts.index("site-packages") + 1:]
        return f"{func} ({'/'.join(parts[-3:])})"
    return frame


def summarise(raw: Path, top: int) -> None:
    """Top frames of py-spy's collapsed stacks: own samples (the leaf) and total samples (on the stack at all).
    Idle samples (a thread waiting in epoll/select/lock acquire) are counted apart, so the shares are of busy time."""
    own: collections.Counter = collections.Counter()
    total: collections.Counter = collections.Counter()
    by_file: collections.Counter = collections.Counter()
    busy = idle = 0
    idle_leaves = ("select (", "poll (", "epoll", "wait (threading.py", "_worker (concurrent", "acquire", "sleep")
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [frame_label(f) for f in stack.split(";") if f and not f.startswith(("thread", "process"))]
        if not frames:
            continue
        if any(frames[-1].startswith(x) or x in frames[-1] for x in idle_leaves):
            idle += n
            continue
        busy += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
        leaf_file = frames[-1].rsplit("(", 1)[-1].rstrip(")").split("/")[0]
        by_file[leaf_file] += n
    print(f"  samples: {busy} busy, {idle} idle (waiting)")
    if not busy:
        return
    print(f"  -- own time (leaf frames), top {top} --")
    for f, n in own.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {f}")
    print(f"  -- total time (on the stack), top {top} --")
    for f, n in total.most_common(top):
        print(f"  {100 * n / busy:5.1f}%  {f}")
    print("  -- own time by top-level package --")
    for f, n in by_file.most_common(15):
        print(f"  {100 * n / busy:5.1f}%  {f}")


# -- cold start -----------------------------------------------------------------------------------------------
AGENT_PORT = 52365  # Ray's dashboard agent's default port: held by an earlier Ray's agents, a start waits on it
STAMP = re.compile(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})")
PHASES = [("imports", "effective config"), ("ray.init", "Ray Serve switches"), ("serve.start", "Started Serve in"),
          ("deploy", "serving on")]


def port_holders(port: int) -> bool:
    """Whether anything listens on ``port`` (Linux /proc/net/tcp*)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for ln in lines:
            parts = ln.split()
            if parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return True
    return False


def stamp_of(line: str) -> float | None:
    m = STAMP.search(line)
    if not m:
        return None
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def session_dir(root: int) -> Path | None:
    """The Ray session directory of the service started by process ``root`` (from its GCS's command line)."""
    for pid in cpu.snapshot(root).ticks:
        m = re.search(r"--session-dir=(\S+)", cpu._cmdline(pid))
        if m:
            return Path(m.group(1))
    return None


def replica_starts(session: Path | None) -> dict[str, float]:
    """Seconds from 'Starting Replica' to 'started successfully', per deployment (the controller's log)."""
    out: dict[str, float] = {}
    if session is None:
        return out
    begun: dict[str, float] = {}
    for log in (session / "logs" / "serve").glob("controller_*.log"):
        for ln in log.read_text(errors="replace").splitlines():
            m = re.search(r"Replica\(id='(\w+)', deployment='([^']+)'", ln)
            t = stamp_of(ln)
            if not m or t is None:
                continue
            if "Starting Replica" in ln:
                begun[m.group(1)] = t
            elif "started successfully" in ln and m.group(1) in begun:
                out[m.group(2)] = t - begun[m.group(1)]
    return out


def poll_ready(url: str, proc: subprocess.Popen, timeout_s: float) -> float:
    """When ``url`` first answered 200 (polled every 0.1 s: a cold start is timed to that resolution)."""
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return time.time()
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout_s:.0f} s")


def cold_start_once(python: str, tree: Path, wait_clean: bool) -> dict:
    """`python -m serve_app` of ``tree`` (its shipped defaults: both embedded models) from launch to /ready."""
    waited = 0.0
    if wait_clean:
        t = time.monotonic()
        while port_holders(AGENT_PORT) and time.monotonic() - t < 240:
            time.sleep(1)
        waited = time.monotonic() - t
    agent_port_busy = port_holders(AGENT_PORT)
    port = suite_free_port()
    with tempfile.TemporaryDirectory() as cwd:
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS" and not k.startswith("RAY_SERVE_")}
        env["PYTHONPATH"] = str(tree)
        log_path = Path(cwd) / "serve.log"
        with open(log_path, "w") as log:
            launched = time.time()
            proc = subprocess.Popen([python, "-m", "serve_app", "--port", str(port)], cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
            try:
                ready = poll_ready(f"http://127.0.0.1:{port}/ready", proc, 240)
                session = session_dir(proc.pid)
            finally:
                proc.send_signal(signal.SIGINT)
                t = time.monotonic()
                try:
                    proc.wait(120)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                shutdown_s = time.monotonic() - t
        text = log_path.read_text(errors="replace")
    at = {"launch": launched}
    for phase, marker in PHASES:
        line = next((ln for ln in text.splitlines() if marker in ln), None)
        at[phase] = stamp_of(line) if line else None
    phases, prev = {}, launched
    for phase, _ in PHASES:
        if at[phase] is not None:
            phases[phase] = at[phase] - prev
            prev = at[phase]
    phases["to /ready"] = ready - prev
    stall = False
    if session is not None:
        agent_log = session / "logs" / "dashboard_agent.log"
        stall = agent_log.exists() and "failed to bind" in agent_log.read_text(errors="replace")
    return {"total_s": ready - launched, "phases_s": phases, "replicas_s": replica_starts(session),
            "agent_port_busy_at_start": agent_port_busy, "agent_port_stall": stall, "waited_clean_s": waited,
            "shutdown_s": shutdown_s}


def cold_starts(n: int, tree: Path, wait_clean: bool) -> list[dict]:
    runs = []
    for i in range(n):
        r = cold_start_once(sys.executable, tree, wait_clean)
        runs.append(r)
        print(f"cold start {i + 1}: {r['total_s']:.1f} s to /ready ("
              + ", ".join(f"{k} {v:.1f}" for k, v in r["phases_s"].items()) + "); replicas: "
              + ", ".join(f"{k} {v:.1f}" for k, v in r["replicas_s"].items())
              + f"; agent port busy at start: {r['agent_port_busy_at_start']}, agent stalled on it: "
              f"{r['agent_port_stall']}; shutdown {r['shutdown_s']:.1f} s", flush=True)
    return runs


# -- the floor: Ray Serve's own cost for this topology ------------------------------------------------------
def floor_child(port: int, sleep_s: float) -> None:
    """Runs in a child (``--_floor PORT``): a no-op app of the service's shape, HTTP -> a FastAPI ingress replica ->
    a handle call -> an ``@serve.batch`` deployment, on Ray started as the suite starts it. The ingress waits
    ``sleep_s`` first, so that 16 clients send about as many requests per second as to the real service (per-request
    CPU depends on the rate: background work, event-loop wake-ups)."""
    import asyncio

    import ray
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(name="TextEmbedder-noop", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.5})
    class Noop:
        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0)
        async def embed(self, texts: list[str]) -> list[int]:
            return [len(t) for t in texts]

        def ready(self) -> bool:
            return True

    @serve.deployment(name="Ingress", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
    @serve.ingress(api)
    class Ingress:
        def __init__(self, noop):
            self.noop = noop.options(method_name="embed")

        @api.post("/v1/classify")
        async def classify(self, body: dict) -> dict:
            await asyncio.sleep(sleep_s)
            return {"chars": await self.noop.remote(str(body.get("input")))}

        @api.get("/ready")
        async def ready(self) -> dict:
            return {"status": "ready"}

    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    env = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    ray.init(num_cpus=4, include_dashboard=False, logging_level="ERROR", runtime_env={"env_vars": env})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(Ingress.bind(Noop.bind()), name="classifier", route_prefix="/")
        while not stopping:
            time.sleep(0.2)
    finally:
        serve.shutdown()
        ray.shutdown()


def floor_cells(args, switches: dict) -> list[dict]:
    port = suite_free_port()
    proc = spawn([sys.executable, str(Path(__file__).resolve()), "--_floor", str(port), "--floor-sleep",
                  str(args.floor_sleep)], env=switches, log_path=f"/tmp/cpu-profile-floor-{port}.log")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, proc, 240)
        bodies = payloads("zeroshot", args.model, args.inputs, "short")
        wrk(url, PATH, bodies, args.concurrency, args.warmup)
        cells = []
        for _ in range(args.repeat):
            busy0, snap0 = busy_seconds(), cpu.snapshot(proc.pid)
            r = measured_wrk(url, PATH, bodies, args.concurrency, args.seconds, proc.pid, False)
            snap1, busy1 = cpu.snapshot(proc.pid), busy_seconds()
            tree_s = sum(max(0, t - snap0.ticks.get(p, 0)) for p, t in snap1.ticks.items()) / cpu.CLOCK_TICKS
            r["processes_ms"] = per_process_ms(snap0, snap1, r["requests"])
            r["elsewhere_cpu_s"] = max(0.0, busy1 - busy0 - tree_s)
            r["window_s"] = args.seconds
            r["cpu_ms"]["model"] = 0.0  # no model: everything is outside it
            cells.append(r)
        return cells
    finally:
        stop(proc)


# -- main -----------------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="all-MiniLM-L6-v2")
    ap.add_argument("--inputs", type=int, default=1, help="inputs per request (short CLINC150 utterances)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15, help="length of the measured wrk cell")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of load before measuring")
    ap.add_argument("--repeat", type=int, default=1, help="measured cells in a row (same service)")
    ap.add_argument("--py-spy", nargs="+", default=[], metavar="ROLE",
                    help="also profile, in a cell of its own, the replica of each role (ingress, embedder) or the "
                    "process whose title contains ROLE (e.g. ServeController, HAProxyManager)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--native", action="store_true",
                    help="py-spy --native: C/C++ frames too (pauses the process per sample: slower, skews more)")
    ap.add_argument("--speedscope", action="store_true", help="also write a speedscope file (a second sampler)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", default="/tmp/cpu-profile", help="where py-spy's files go")
    ap.add_argument("--env", default="{}", help="extra environment for the service, JSON (e.g. RAY_SERVE_* switches)")
    ap.add_argument("--idle", type=float, default=0, help="also measure the service's CPU with no load for this long")
    ap.add_argument("--json", help="write the cells (JSON) here")
    ap.add_argument("--cold-start", type=int, default=0, metavar="N",
                    help="instead: start `python -m serve_app` (shipped defaults, both embedded models) N times, each "
                    "to /ready, and say where the time went")
    ap.add_argument("--clean", action="store_true",
                    help="--cold-start: before each start, wait until no earlier Ray's agent holds port 52365")
    ap.add_argument("--floor", action="store_true",
                    help="instead: the same cell for a no-op app of the same shape (Ray Serve's own cost)")
    ap.add_argument("--floor-sleep", type=float, default=0.09,
                    help="--floor: seconds the no-op ingress waits per request (to match the service's request rate)")
    ap.add_argument("--_floor", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._floor:
        floor_child(args._floor, args.floor_sleep)
        return
    if args.floor:
        switches = {**default_switches(os.environ), **SWITCH_COMMON_ENV, **json.loads(args.env)}
        cells = floor_cells(args, switches)
        report(cells, f"no-op app of the same shape (Ray Serve's floor), c={args.concurrency}, {args.seconds:g} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "switches": switches, "cells": cells}, indent=1))
        return
    if args.cold_start:
        runs = cold_starts(args.cold_start, ROOT, args.clean)
        totals = sorted(r["total_s"] for r in runs)
        print(f"cold start: median {totals[len(totals) // 2]:.1f} s, min {totals[0]:.1f} s, max {totals[-1]:.1f} s")
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "cold_starts": runs}, indent=1))
        return

    ensure_debian("wrk", "wrk")
    switches = {**default_switches(os.environ), **SWITCH_COMMON_ENV, **json.loads(args.env)}
    bodies = payloads("zeroshot", args.model, args.inputs, "short")
    started = time.perf_counter()
    proc, url = start_service(args.model, switches)
    print(f"service up in {time.perf_counter() - started:.1f} s at {url} (pid {proc.pid}); switches {switches}")
    try:
        for b in bodies[:8]:
            status, _, _ = post(url + PATH, b)
            if status != 200:
                raise SystemExit(f"warm-up request answered {status}")
        # /v1/stats starts the state shards (the first call that needs them does): before the window, not in it
        model_cpu_s(url)
        wrk(url, PATH, bodies, args.concurrency, args.warmup)
        time.sleep(2)  # actors started by the warm-up (the accounts actor's first flush) finish starting
        cells = [one_cell(url, bodies, args.concurrency, args.seconds, proc.pid) for _ in range(args.repeat)]
        report(cells, f"{args.model}, {args.inputs} short input(s), 5 labels, c={args.concurrency}, {args.seconds:g} s")
        idle = idle_cpu(proc.pid, args.idle, cells) if args.idle else None
        if args.json:
            Path(args.json).write_text(json.dumps({"args": vars(args), "switches": switches, "cells": cells,
                                                   "idle": idle}, indent=1))
            print(f"cells: {args.json}")
        if args.py_spy:
            py_spy_cell(url, bodies, args, proc.pid, Path(args.out or tempfile.mkdtemp()))
    finally:
        stop(proc)


if __name__ == "__main__":
    main()
