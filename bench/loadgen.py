"""The bench suite's load generator: the request bodies, one `wrk` cell, the CPU it cost, and a system's cells.

A cell is one (endpoint, input length, inputs per request, client concurrency) of one system, loaded by `wrk -t1`
with a Lua script that cycles through real bodies. A cell runs for at least its window (``Window.seconds``) and
until at least ``Window.min_requests`` requests have finished, but never past ``Window.max_seconds``: the script
counts the requests it has started (each one past the first ``concurrency`` follows a finished one) and, once both
are reached, sends its own process SIGINT, on which wrk stops and prints its summary with the true duration. A
cell that reaches the bound with fewer finished requests is kept and reported as not measured
(``Window.enough``). wrk's Lua is LuaJIT; without its FFI every cell runs to the bound.

With ``root`` (the system's top process) a cell also gets the CPU milliseconds per request of every process of the
system's tree, by role (bench/cpu.py), and for the service the embedder's share split into model calls and the rest.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from bench import cpu

ROOT = Path(__file__).resolve().parent.parent
LABELS = ["banking and money", "travel and transport", "cooking and food", "small talk", "home and utilities"]
PATHS = {"zeroshot": "/v1/classify", "fewshot": "/v1/classify", "train": "/v1/train", "embeddings": "/v1/embeddings",
         "peer": "/embeddings"}


def log(*a) -> None:
    print(*a, flush=True)


@dataclass(frozen=True)
class Window:
    """How long a cell runs: at least ``seconds`` and ``min_requests`` finished requests, at most ``max_seconds``.
    ``min_requests=0`` is a plain fixed window of ``seconds`` (bench/cpu_profile.py's CPU windows)."""

    seconds: float
    min_requests: int = 0
    max_seconds: float | None = None

    @property
    def bound_s(self) -> int:
        bound = self.seconds if not self.min_requests else max(self.seconds, self.max_seconds or self.seconds)
        return max(1, math.ceil(bound))

    def enough(self, row: dict) -> bool:
        return row.get("requests", 0) >= self.min_requests


def window_of(window: Window | float) -> Window:
    return window if isinstance(window, Window) else Window(float(window))


# -- texts and payloads ------------------------------------------------------------------------------------
def texts(kind: str, n: int) -> list[str]:
    from bench.common import clinc_texts

    base = clinc_texts(3000)
    if kind == "short":
        return base[:n]
    out, i = [], 0
    for _ in range(n):  # ~325 words of real utterances: about 400 tokens (MiniLM's tokenizer)
        words: list[str] = []
        while len(words) < 325:
            words += (base[i % len(base)].rstrip("?.!") + ".").split()
            i += 1
        out.append(" ".join(words))
    return out


def payloads(endpoint: str, model: str, size: int, kind: str, ids: list[str] | None = None) -> list[dict]:
    per = 2000 if kind == "short" else 40  # keep the wrk script small (~1-3 MB)
    n_bodies = max(4, min(128, per // size))
    pool = texts(kind, max(n_bodies * size, 64))
    out = []
    for b in range(n_bodies):
        chunk = [pool[(b * size + j) % len(pool)] for j in range(size)]
        if endpoint == "zeroshot":
            out.append({"model": model, "input": chunk, "labels": LABELS})
        elif endpoint == "fewshot":
            out.append({"classifier_id": ids[b % len(ids)], "input": chunk})
        elif endpoint == "train":
            out.append({"classifier_id": ids[b % len(ids)],
                        "input": [{"text": t, "label": LABELS[(b + j) % 3]} for j, t in enumerate(chunk)]})
        elif endpoint in ("embeddings", "peer"):
            out.append({"model": model, "input": chunk})
        else:
            raise ValueError(endpoint)
    return out


def many_labels(n: int) -> list[str]:
    """n distinct real label names: CLINC150's intents in words, then again as "questions about ..."."""
    domains = json.loads((ROOT.parent / "shared" / "data" / "text" / "label_domains.json").read_text())["domains"]
    names = sorted({i.replace("_", " ") for intents in domains.values() for i in intents})
    names += [f"questions about {x}" for x in names]
    if len(names) < n:
        names += [f"topic {i}" for i in range(n - len(names))]
    return names[:n]


# -- one wrk cell ------------------------------------------------------------------------------------------
def lua_string(s: str) -> str:
    level = 1
    while f"]{'=' * level}]" in s:
        level += 1
    return f"[{'=' * level}[{s}]{'=' * level}]"


# The stop rule (see the module's docstring). Calls of request(): one per connection's first request, one after
# each finished request, and one more by wrk itself before the run (it checks the script's request on the first
# thread's state). A monotonic clock through LuaJIT's FFI; SIGINT goes to wrk's main thread (the thread group
# leader), which sleeps for -d and prints the summary when woken.
LUA_STOP = """
local has_ffi, ffi = pcall(require, "ffi")
local now = os.time
if has_ffi then
  ffi.cdef[[ typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
             int clock_gettime(int, bench_timespec *); int getpid(void); int kill(int, int); ]]
  local ts = ffi.new("bench_timespec")
  now = function() ffi.C.clock_gettime(1, ts); return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9 end
end
local started, calls, sent = nil, 0, false
local function maybe_stop()
  if started == nil then started = now() end
  calls = calls + 1
  if has_ffi and not sent and need > 0 and calls - conns - 1 >= need and now() - started >= window then
    sent = true
    ffi.C.kill(ffi.C.getpid(), 2)
  end
end
"""


def lua_script(path: str, bodies: list[dict], concurrency: int, window: Window) -> str:
    return (
        "bodies = {" + ",".join(lua_string(json.dumps(b)) for b in bodies) + "}\n"
        f"window, need, conns = {window.seconds}, {window.min_requests}, {concurrency}\n" + LUA_STOP +
        "local i = 0\nrequest = function()\n maybe_stop()\n i = i % #bodies + 1\n"
        f' return wrk.format("POST", "{path}", {{["Content-Type"]="application/json"}}, bodies[i])\nend\n'
        "done = function(s, lat, r)\n"
        ' io.write(string.format("RESULT %d %f %d %d %d %d %d %f %f %f\\n", s.requests, s.duration / 1e6,'
        " s.errors.status, s.errors.timeout, s.errors.connect, s.errors.read, s.errors.write,"
        " lat:percentile(50) / 1e3, lat:percentile(99) / 1e3, lat.mean / 1e3))\nend\n"
    )


def parse_result(out: str, window: Window) -> dict:
    """wrk's RESULT line -> the cell: requests/s, finished requests and the seconds they took, latency percentiles
    (ms), non-2xx answers and socket errors/timeouts."""
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        return {"rps": 0.0, "requests": 0, "duration_s": 0.0, "non2xx": 0, "timeouts": 0, "sock": 0, "p50": None,
                "p99": None, "min_requests": window.min_requests, "error": out[-300:]}
    _, reqs, secs, status, tmo, conn, rd, wr, p50, p99, mean = line.split()
    done = int(reqs)
    return {"requests": done, "duration_s": float(secs), "rps": done / float(secs), "non2xx": int(status),
            "timeouts": int(tmo), "sock": int(conn) + int(rd) + int(wr), "min_requests": window.min_requests,
            "p50": float(p50) if done else None, "p99": float(p99) if done else None,
            "mean": float(mean) if done else None}


def wrk(url: str, path: str, bodies: list[dict], concurrency: int, window: Window | float, timeout_s: int = 30) -> dict:
    """One wrk cell (``window``: a ``Window``, or seconds for a plain fixed window)."""
    window = window_of(window)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua_script(path, bodies, concurrency, window))
    try:
        cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{window.bound_s}s", "--timeout", f"{timeout_s}s", "-s", f.name,
               url]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=window.bound_s + timeout_s + 60).stdout
    finally:
        os.unlink(f.name)
    return parse_result(out, window)


def model_cpu_s(url: str) -> float | None:
    """CPU seconds the service's embedder replicas have spent in model calls so far (timed inside each replica)."""
    try:
        with urllib.request.urlopen(url + "/v1/stats", timeout=30) as r:
            stats = json.loads(r.read())
    except Exception:  # noqa: BLE001 (an older service, or one with keys required: no split)
        return None
    embedders = stats.get("embedders", {})
    replicas = [e for e in (embedders.values() if isinstance(embedders, dict) else embedders) if isinstance(e, dict)]
    return sum(float(e.get("model_cpu_s", 0.0)) for e in replicas) if replicas else None


def measured_wrk(url: str, path: str, bodies: list[dict], concurrency: int, window: Window | float,
                 root: int | None, split_model: bool) -> dict:
    """One wrk cell plus, with ``root``, the CPU milliseconds per request of the system's process tree by role
    (bench/cpu.py); ``split_model`` also splits the embedder's CPU into model calls and the rest."""
    if root is None:
        return wrk(url, path, bodies, concurrency, window)
    model_before = model_cpu_s(url) if split_model else None
    before = cpu.snapshot(root)
    r = wrk(url, path, bodies, concurrency, window)
    used = cpu.cpu_by_role(before, cpu.snapshot(root))
    model_after = model_cpu_s(url) if split_model else None
    if model_before is not None and model_after is not None:
        model = max(0.0, model_after - model_before)
        used["model"] = min(model, used["embedder"])
        used["embedder"] -= used["model"]
    r["cpu_ms"] = cpu.per_request_ms(used, r["requests"])
    return r


# -- HTTP helpers ------------------------------------------------------------------------------------------
def post(url: str, body: dict, timeout: float = 120) -> tuple[int, dict | None, float]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read()), time.perf_counter() - start
    except urllib.error.HTTPError as e:
        return e.code, None, time.perf_counter() - start


def drain(url: str, path: str, probe: dict, idle_s: float, limit_s: float = 120) -> None:
    """Wait until the server has worked off the backlog a cell left behind (a probe answers at idle speed)."""
    deadline = time.time() + limit_s
    while time.time() < deadline:
        try:
            _, _, took = post(url + path, probe, timeout=limit_s)
        except Exception:  # noqa: BLE001
            took = limit_s
        if took < max(0.3, 3 * idle_s):
            return
        time.sleep(0.5)


# -- a system's cells --------------------------------------------------------------------------------------
def describe(row: dict) -> str:
    """One log line for a measured cell."""
    bad = row["non2xx"] + row["timeouts"] + row["sock"]
    few = "" if row["requests"] >= row.get("min_requests", 0) else f"  (fewer than {row['min_requests']}: not measured)"
    return (f"  {row['system']:8s} {row['endpoint']:10s} {row['model']:22s} {row['kind']:5s} x{row['size']:2d} "
            f"c={row['concurrency']:2d}: {row['rps']:7.1f} req/s {row['inputs_per_s']:7.1f} inputs/s "
            f"p50 {row['p50'] or 0:8.1f} ms p99 {row['p99'] or 0:8.1f} ms, {row['requests']} finished in "
            f"{row['duration_s']:.1f} s{'  (' + str(bad) + ' errors)' if bad else ''}{few}")


def cell_row(system: str, endpoint: str, model: str, kind: str, size: int, conc: int, r: dict) -> dict:
    return {"system": system, "endpoint": endpoint, "model": model, "kind": kind, "size": size, "concurrency": conc,
            "inputs_per_s": r["rps"] * size, **r}


def run_cells(results: list, system: str, model: str, url: str, endpoints: list[str], args, ids=None,
              root: int | None = None) -> None:
    """Every cell of one system (``args``: lengths, sizes, concurrency, window, max_backlog); with ``root`` (the
    system's top process) each cell also gets its CPU per request."""
    for endpoint in endpoints:
        path = PATHS[endpoint]
        probe = payloads(endpoint, model, 1, "short", ids)[0]
        post(url + path, probe)
        _, _, idle = post(url + path, probe)
        for kind in args.lengths:
            for size in args.sizes:
                bodies = payloads(endpoint, model, size, kind, ids)
                status, _, _ = post(url + path, bodies[0], timeout=300)  # warm-up and sanity check
                if status != 200:
                    log(f"  !! {system}/{endpoint} {kind} x{size}: warm-up answered {status}")
                one = post(url + path, bodies[-1], timeout=300)[2]  # one request, idle server
                for conc in args.concurrency:
                    if conc > 1 and conc * one > args.max_backlog:
                        # The cell would only build a queue of conc x one seconds that outlives it (and the
                        # next cell); its throughput is the same as at a lower concurrency by construction.
                        results.append({"system": system, "endpoint": endpoint, "model": model, "kind": kind,
                                        "size": size, "concurrency": conc, "skipped": f"{conc} x {one:.1f} s backlog"})
                        log(f"  {system:8s} {endpoint:10s} {model:22s} {kind:5s} x{size:2d} c={conc:2d}: skipped "
                            f"(one request takes {one:.1f} s idle: {conc * one:.0f} s of queued work > --max-backlog)")
                        continue
                    r = measured_wrk(url, path, bodies, conc, args.window, root, system == "service")
                    row = cell_row(system, endpoint, model, kind, size, conc, r)
                    results.append(row)
                    log(describe(row))
                    drain(url, path, probe, idle)
