"""A multi-node Ray cluster on this machine that mirrors cluster.yaml, the app deployed on it from the GPU Serve
config with `serve deploy` (as docs/deploy.md tells a user), and what the cluster tests observe and measure with.

* :class:`ProjectCluster`: Ray's own ``AutoscalingCluster`` (its autoscaler over the fake multi-node provider, which
  starts and stops real local raylets of the declared node types) with cluster.yaml's node types: their resources
  (CPU, GPU and the custom ``cpu_node``), ``min_workers`` / ``max_workers``, ``max_workers`` and ``upscaling_speed``.
  GPU nodes advertise ``GPU: 1`` without a GPU; the torch embedder runs on its CPU engine there, with the GPU
  config's ``num_gpus`` fraction, so Ray places replicas exactly as on the real cluster.
* :func:`serve_config`: deploy/serve_config.gpu.yaml with only what this machine needs changed (listed there).
* :class:`ClusterApp`: deploy a config, wait for it, and read where every replica and actor runs from Ray's state
  API (never from the config).
* :class:`Load`: HTTP clients on 127.0.0.1 that classify and train (with Idempotency-Key) and keep every answer.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import httpx
import ray
import yaml
from ray.cluster_utils import AutoscalingCluster

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
GPU_SERVE = ROOT / "deploy" / "serve_config.gpu.yaml"
BIN = Path(sys.executable).parent  # the venv's `ray` and `serve` commands

APP = "classifier"
GPU_MODEL = "all-MiniLM-L6-v2"  # a torch engine: on the GPU workers (num_gpus 0.25), on CPU here
CPU_MODEL = "multilingual-e5-small"  # here on the CPU nodes (torch_e5 on CPU), as a model kept off the GPU workers
EMBEDDER = f"TextEmbedder-{GPU_MODEL}"
CPU_EMBEDDER = f"TextEmbedder-{CPU_MODEL}"
FAKE_HEAD_TYPE = "ray.head.default"  # the fake provider's fixed name for the head's type
OBJECT_STORE_BYTES = 100 * 2**20  # per node: the replicas pass small objects; Ray's default would be 30% of RAM each
IDLE_TIMEOUT_MIN = 0.25  # cluster.yaml: 10 min. A test cannot wait that long for an idle node to go.
BIG = {"rpm": 1_000_000, "tpm": 1_000_000_000}  # rate limits on (their code path runs) but never reached
# Serve's autoscaling reacts within seconds instead of cluster.yaml's minutes (same policy, shorter windows).
FAST_SCALING = {"upscale_delay_s": 1, "downscale_delay_s": 5, "look_back_period_s": 2, "metrics_interval_s": 0.5}

SEED = {
    "weather": ["It will rain all day tomorrow.", "Expect snow and freezing wind tonight.", "A sunny, hot afternoon is forecast."],
    "sport": ["The striker scored a late winner.", "She won the tennis final in three sets.", "The team lost the derby at home."],
    "cooking": ["Simmer the sauce for twenty minutes.", "Knead the dough and let it rise.", "Fry the onions until golden."],
}
UPDATES = [("Thunderstorms are rolling in from the west.", "weather"), ("He ran the marathon in record time.", "sport"),
           ("Season the soup with salt and pepper.", "cooking")]
LABELS = ["weather", "sport", "cooking"]
WEATHER = ["Heavy rain and thunderstorms expected tomorrow.", "Strong winds and snow are forecast for tonight.",
           "Flood warnings after a week of heavy rain.", "Temperatures drop below freezing with icy fog."]
FEW_SHOT_PROBE = "Snow and ice on the roads tonight."
ERROR_FIELDS = {"code", "detail", "request_id"}


# ---------------------------------------------------------------------------------------------------------------
# The cluster


def node_types(cluster_yaml: Path = CLUSTER_YAML) -> tuple[dict, dict, dict]:
    """cluster.yaml's head resources, its worker types as the fake provider takes them, and the whole config."""
    cfg = yaml.safe_load(cluster_yaml.read_text())
    types = cfg["available_node_types"]
    head = dict(types[cfg["head_node_type"]]["resources"])
    workers = {
        name: {
            "resources": {**t["resources"], "object_store_memory": OBJECT_STORE_BYTES},
            "node_config": {},
            "min_workers": t["min_workers"],
            "max_workers": t["max_workers"],
        }
        for name, t in types.items() if name != cfg["head_node_type"]
    }
    return head, workers, cfg


class ProjectCluster(AutoscalingCluster):
    """Ray's AutoscalingCluster with cluster.yaml's node types, its generated config and head start adapted:

    * the config is written here: the PyPI wheel lacks the base file AutoscalingCluster reads
      (ray/autoscaler/_private/fake_multi_node/example.yaml is only in Ray's repository);
    * the head's custom resources (``cpu_node``) are passed as JSON (upstream wraps them in shell quotes, which
      ``ray start`` then fails to parse when no shell is involved), and its dashboard (Serve's REST API, what
      ``serve deploy`` talks to) on a port chosen by the caller.

    ``start()`` and ``shutdown()`` run ``ray stop --force``, which ends every Ray process on the machine: never run
    this beside another Ray instance (tests/cluster runs in a pytest process of its own)."""

    def __init__(self, cluster_yaml: Path = CLUSTER_YAML, *, dashboard_port: int, log_dir: Path):
        head, workers, cfg = node_types(cluster_yaml)
        self.dashboard_port = dashboard_port
        self.log_dir = log_dir
        super().__init__(
            head_resources=head, worker_node_types=workers, max_workers=cfg["max_workers"],
            upscaling_speed=cfg["upscaling_speed"], idle_timeout_minutes=IDLE_TIMEOUT_MIN,
        )

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        types = copy.deepcopy(worker_node_types)
        types[FAKE_HEAD_TYPE] = {"resources": dict(head_resources), "node_config": {}, "max_workers": 0}
        config = {
            "cluster_name": "ray-classifier-test",
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                         "disable_launch_config_check": True},
            "auth": {}, "docker": {}, "file_mounts": {}, "file_mounts_sync_continuously": False,
            "available_node_types": types, "head_node_type": FAKE_HEAD_TYPE,
            **{k: [] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                               "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
        }
        config.update(config_kwargs)
        return config

    def _ray(self, *args: str, env: dict | None = None) -> None:
        with open(self.log_dir / "ray-cli.log", "a") as log:
            subprocess.check_call([str(BIN / "ray"), *args], env=env, stdout=log, stderr=subprocess.STDOUT)

    def start(self, _system_config=None, override_env=None):
        self._ray("stop", "--force")
        fd, path = tempfile.mkstemp(prefix="fake-cluster-", suffix=".json", dir=self.log_dir)
        with os.fdopen(fd, "w") as f:
            json.dump(self._config, f)
        head = dict(self._head_resources)
        cmd = ["start", "--head", f"--autoscaling-config={path}", f"--num-cpus={head.pop('CPU')}",
               f"--num-gpus={head.pop('GPU', 0)}", f"--object-store-memory={OBJECT_STORE_BYTES}",
               "--include-dashboard=true", f"--dashboard-port={self.dashboard_port}", "--disable-usage-stats"]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        self._ray(*cmd, env={**os.environ, "AUTOSCALER_UPDATE_INTERVAL_S": "1", "RAY_FAKE_CLUSTER": "1"})
        ray._private.services.find_gcs_addresses.cache_clear()

    def shutdown(self):
        self._ray("stop", "--force")
        ray._private.services.find_gcs_addresses.cache_clear()


def kill_node(node_id: str) -> int:
    """SIGKILL a node's raylet and every process under it (its workers: replicas and actors; its agents): a node
    lost, not drained. Returns how many processes were killed."""
    import psutil  # the copy Ray ships (ray/thirdparty_files, on sys.path once ray is imported)

    raylets = [p for p in psutil.process_iter(["name", "cmdline"])
               if p.info["name"] == "raylet" and f"--node_id={node_id}" in (p.info["cmdline"] or [])]
    assert len(raylets) == 1, f"raylet of node {node_id}: {raylets}"
    procs = raylets[0].children(recursive=True) + raylets
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(procs)


# ---------------------------------------------------------------------------------------------------------------
# What runs where (Ray's state API)


@dataclass(frozen=True)
class Node:
    node_id: str
    kind: str  # head, cpu_worker or gpu_worker, from the resources the node advertises
    alive: bool

    @property
    def label(self) -> str:
        return f"{self.kind}:{self.node_id[-5:]}"  # the fake provider's ids end in a 5-digit counter

    @property
    def cpu(self) -> bool:
        return self.kind != "gpu_worker"


@dataclass(frozen=True)
class Actor:
    name: str
    cls: str
    node_id: str
    pid: int
    restarts: int


def _state_api(list_fn, **kw) -> list:
    """A state-API listing, complete or an error (a partial answer, e.g. while a node dies, is retried)."""
    for attempt in range(5):
        try:
            return list_fn(limit=10000, timeout=30, raise_on_missing_output=True, **kw)
        except Exception:  # noqa: BLE001 - RayStateApiException and friends: ask again
            if attempt == 4:
                raise
            time.sleep(1)
    raise AssertionError("unreachable")


def nodes(alive_only: bool = True) -> dict[str, Node]:
    from ray.util.state import list_nodes

    out = {}
    for n in _state_api(list_nodes):
        res = n.resources_total or {}
        kind = "head" if n.is_head_node else "gpu_worker" if res.get("GPU", 0) > 0 else "cpu_worker"
        out[n.node_id] = Node(n.node_id, kind, n.state == "ALIVE")
    return {k: v for k, v in out.items() if v.alive or not alive_only}


def gpu_nodes() -> list[Node]:
    return [n for n in nodes().values() if n.kind == "gpu_worker"]


def actors() -> list[Actor]:
    from ray.util.state import list_actors

    return [Actor(a.name or "", a.class_name, a.node_id, a.pid, a.num_restarts or 0)
            for a in _state_api(list_actors, filters=[("state", "=", "ALIVE")], detail=True)]


def replicas(deployment: str, app: str = APP) -> list[Actor]:
    return [a for a in actors() if a.cls == f"ServeReplica:{app}:{deployment}"]


def shards(store_url: str) -> list[Actor]:
    from deployments.classifier_shards import store_digest

    return sorted((a for a in actors() if a.name.startswith(f"classifier-shard-{store_digest(store_url)}-")),
                  key=lambda a: a.name)


def shard_index(actor: Actor) -> int:
    return int(actor.name.rsplit("-", 1)[1])


def replica_states(deployment: str, app: str = APP) -> dict[str, int]:
    from ray import serve

    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return {}
    return {getattr(state, "value", state): n for state, n in status.deployments[deployment].replica_states.items()}


def placement(store_url: str) -> dict[str, list[str]]:
    """node label -> what runs there (Serve replicas and controller, proxies, state shards, the accounts actor)."""
    from deployments.classifier_shards import store_digest

    by_node = {n.node_id: n.label for n in nodes().values()}
    out: dict[str, list[str]] = {label: [] for label in by_node.values()}
    shard_prefix = f"classifier-shard-{store_digest(store_url)}-"
    for a in actors():
        what = (a.cls.split(":")[-1] if a.cls.startswith("ServeReplica:") else
                f"shard-{shard_index(a)}" if a.name.startswith(shard_prefix) else
                a.cls if a.cls in ("ServeController", "ProxyActor", "AccountsActor") else None)
        if what and a.node_id in by_node:
            out[by_node[a.node_id]].append(what)
    return {k: sorted(v) for k, v in sorted(out.items())}


def wait_for(what: str, cond: Callable[[], object], timeout_s: float, every_s: float = 0.5,
             describe: Callable[[], object] | None = None):
    """Poll until cond() is truthy; returns its value (AssertionError naming `what` after timeout_s: a bound, so a
    broken cluster fails the test instead of hanging it; never a performance assertion). ``describe`` adds what
    the cluster looked like at the timeout to the error."""
    deadline = time.time() + timeout_s
    last: object = None
    while time.time() < deadline:
        try:
            last = cond()
        except Exception as exc:  # noqa: BLE001 - the state API can fail while a node dies; poll again
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    seen = ""
    if describe is not None:
        try:
            seen = f"; cluster: {describe()!r}"
        except Exception as exc:  # noqa: BLE001 - best effort
            seen = f"; cluster: unreadable ({exc!r})"
    raise AssertionError(f"{what}: not within {timeout_s:.0f} s (last seen: {last!r}{seen})")


def describe_embedders(store_url: str) -> Callable[[], object]:
    """For wait_for: the embedder's replica states and what runs on every node."""
    return lambda: {"replica states": replica_states(EMBEDDER), "app": app_status(), "placement": placement(store_url)}


def app_status(app: str = APP) -> str:
    """The application's Serve status and its message (a failed deploy says why here)."""
    from ray import serve

    status = serve.status().applications.get(app)
    return "absent" if status is None else f"{getattr(status.status, 'value', status.status)}: {status.message[:2000]}"


# ---------------------------------------------------------------------------------------------------------------
# The app, from the GPU Serve config


def serve_config(store_url: str, port: int, *, embedder_scaling: dict | None = None, args_changes: dict | None = None) -> dict:
    """deploy/serve_config.gpu.yaml for this machine. Changed, and only this: HTTP on 127.0.0.1:<port>; the two
    embedded text models (CLIP needs the Hub); the torch model on its CPU engine in float32 (the config's float16 is
    for GPUs), keeping its ``num_gpus: 0.25``; e5 on the CPU nodes, on CPU in float32 with two threads (so the test
    also places a model on CPU nodes);
    the state store; rate limits far above the test load (keys stay required); the embedder's Serve autoscaling
    windows shortened (FAST_SCALING) and its replica bounds set by the test. Everything else (resources per replica,
    the Ingress, num_shards, batching) is the config's."""
    cfg = yaml.safe_load(GPU_SERVE.read_text())
    cfg["http_options"] = {"host": "127.0.0.1", "port": port}
    (app,) = cfg["applications"]
    args = app["args"]
    args["models"] = [CPU_MODEL, GPU_MODEL]
    overrides = {m: args["embedder_overrides"][m] for m in args["models"]}
    assert overrides[GPU_MODEL].pop("dtype") == "float16", "the config this adapts has changed"
    overrides[GPU_MODEL]["device"] = "cpu"
    assert "extra_models" not in args, "the config this adapts has changed"
    assert overrides[CPU_MODEL].pop("dtype") == "float16", "the config this adapts has changed"
    overrides[CPU_MODEL].update(device="cpu", num_threads=2)  # torch's threads = the replica's CPUs
    args["embedder_overrides"] = overrides
    args["state"]["store_url"] = store_url
    args["accounts"]["tiers"] = {"default": {m: BIG for m in ("zeroshot", "fewshot", "train", "embeddings")}}
    app["deployments"] = [d for d in app["deployments"] if d["name"] in ("Ingress", CPU_EMBEDDER, EMBEDDER)]
    embedder = next(d for d in app["deployments"] if d["name"] == EMBEDDER)
    assert embedder["ray_actor_options"].get("num_gpus") == 0.25, "the config this adapts has changed"
    e5 = next(d for d in app["deployments"] if d["name"] == CPU_EMBEDDER)
    e5["ray_actor_options"] = {"num_cpus": 2, "resources": {"cpu_node": 2}}  # CPU nodes only, like the Ingress
    embedder["autoscaling_config"].update(FAST_SCALING, **(embedder_scaling or {}))
    for path, value in (args_changes or {}).items():
        node = args
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return cfg


def replicas_per_gpu_node() -> int:
    """How many embedder replicas one GPU node holds: its GPUs over the replica's fraction (cluster.yaml, config)."""
    _, workers, _ = node_types()
    gpus = workers["gpu_worker"]["resources"]["GPU"]
    embedder = next(d for d in yaml.safe_load(GPU_SERVE.read_text())["applications"][0]["deployments"] if d["name"] == EMBEDDER)
    return int(round(gpus / embedder["ray_actor_options"]["num_gpus"]))


@dataclass
class Keys:
    """API keys in one store: a user key per state shard (its account's classifiers live on that shard), an admin."""

    by_shard: dict[int, str]
    admin: str

    @staticmethod
    def create(store_url: str, num_shards: int) -> "Keys":
        from classifiers.accounts.keys import AccountStore
        from classifiers.storage.store import open_blob_store
        from deployments.classifier_shards import shard_of

        accounts = AccountStore(open_blob_store(store_url))
        by_shard: dict[int, str] = {}
        while len(by_shard) < num_shards:
            rec, key = accounts.create_key(f"cluster-test-{len(by_shard)}")
            by_shard.setdefault(shard_of(rec.account_id, num_shards), key)
        return Keys(by_shard, accounts.create_key("cluster-admin", admin=True)[1])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


class ClusterApp:
    """The app on the cluster: `serve deploy` of a config file through the dashboard, as docs/deploy.md does."""

    def __init__(self, port: int, dashboard_port: int, workdir: Path, store_url: str):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.dashboard = f"http://127.0.0.1:{dashboard_port}"
        self.workdir = workdir
        self.store_url = store_url  # the default (local directory) store
        self.deployed: dict | None = None
        self._keys: dict[str, Keys] = {}
        self._n = 0

    def config(self, store_url: str | None = None, **kw) -> dict:
        return serve_config(store_url or self.store_url, self.port, **kw)

    def deploy(self, cfg: dict, *, wait: bool = True) -> float:
        """`serve deploy` the config; with ``wait``, until every deployment runs only replicas of it. Seconds taken."""
        if cfg == self.deployed:
            return 0.0
        self._n += 1
        path = self.workdir / f"serve-config-{self._n}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        start = time.time()
        subprocess.run([str(BIN / "serve"), "deploy", str(path), "-a", self.dashboard], check=True, capture_output=True)
        self.deployed = cfg
        if wait:
            self.wait_running(since=start)
        return time.time() - start

    def wait_running(self, since: float = 0.0, timeout_s: float = 240) -> None:
        from ray import serve

        def running():
            app = serve.status().applications.get(APP)
            return (app is not None and app.status == "RUNNING" and app.last_deployed_time_s >= since - 1
                    and all(set(d.replica_states) == {"RUNNING"} for d in app.deployments.values()))

        wait_for("the app RUNNING with every replica RUNNING", running, timeout_s)

    def keys(self, store_url: str | None = None) -> Keys:
        url = store_url or self.store_url
        if url not in self._keys:
            num_shards = (self.deployed or self.config())["applications"][0]["args"]["state"]["num_shards"]
            self._keys[url] = Keys.create(url, num_shards)
        return self._keys[url]

    def client(self, key: str | None = None, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout, headers=auth(key) if key else None)

    def touch_all_shards(self, keys: Keys) -> None:
        """/v1/stats (admin) calls every state shard: each is created (placed by Ray) if it is not there yet."""
        with self.client(keys.admin) as c:
            r = c.get("/v1/stats")
            assert r.status_code == 200, r.text

    def create_classifiers(self, key: str, n: int) -> list[str]:
        examples = [{"text": t, "label": lab} for lab, ts in SEED.items() for t in ts]
        out = []
        with self.client(key) as c:
            for _ in range(n):
                r = c.post("/v1/train", json={"model": GPU_MODEL, "input": examples})
                assert r.status_code == 200, r.text
                out.append(r.json()["classifier_id"])
        return out

    def samples(self, key: str) -> dict[str, int]:
        with self.client(key) as c:
            r = c.get("/v1/classifiers")
            assert r.status_code == 200, r.text
            return {x["classifier_id"]: x["num_samples"] for x in r.json()}

    def few_shot_ok(self, key: str, cid: str) -> bool:
        with self.client(key) as c:
            r = c.post("/v1/classify", json={"classifier_id": cid, "input": [FEW_SHOT_PROBE]})
            return r.status_code == 200 and r.json()["data"][0]["prediction"] == "weather"

    def served_by_replica(self, keys: Keys, model: str = GPU_MODEL, calls: int = 30) -> dict[int, int]:
        """pid -> requests that replica's model has served: its own counter, in /v1/stats (admin), which the
        ingress reads from whichever replica its handle routes to; many calls reach every replica."""
        seen: dict[int, int] = {}
        with self.client(keys.admin) as c:
            for _ in range(calls):
                r = c.get("/v1/stats")
                if r.status_code == 200:
                    s = r.json()["embedders"][model]
                    seen[s["pid"]] = max(seen.get(s["pid"], 0), s["requests"])
        return seen


# ---------------------------------------------------------------------------------------------------------------
# Load


def is_error_body(resp: httpx.Response) -> bool:
    try:
        return ERROR_FIELDS <= set(resp.json())
    except ValueError:
        return False


@dataclass
class Event:
    start: float
    end: float
    kind: str  # zero-shot, few-shot, train
    stream: str  # which client: "zero-shot #<n>", "few-shot <classifier>", "train <classifier>"
    outcome: str  # "200", another status, or an httpx exception's name
    wrong: str = ""  # a 200 whose answer is wrong


@dataclass
class Load:
    """Clients on 127.0.0.1 until stopped: zero-shot /classify (``zero_shot`` clients, ``inputs`` texts each),
    few-shot /classify of ``few_shot`` classifiers, and /train of ``train`` classifiers with an Idempotency-Key,
    each retried with the same key until acknowledged, as a careful client does. Every answer is kept."""

    url: str
    key: str
    zero_shot: int = 2
    inputs: int = 4
    few_shot: list[str] = field(default_factory=list)
    train: list[str] = field(default_factory=list)
    keys: dict[str, str] = field(default_factory=dict)  # classifier -> its owner's key (default: ``key``)
    events: list[Event] = field(default_factory=list)
    acknowledged: Counter = field(default_factory=Counter)
    unacknowledged: Counter = field(default_factory=Counter)

    def __post_init__(self):
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._zero_shot, args=(n,), daemon=True) for n in range(self.zero_shot)]
        self.threads += [threading.Thread(target=self._few_shot, args=(c,), daemon=True) for c in self.few_shot]
        self.threads += [threading.Thread(target=self._train, args=(c,), daemon=True) for c in self.train]

    def _client(self, key: str) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, headers=auth(key))

    def _post(self, c: httpx.Client, stream: str, body: dict, check: Callable[[dict], str], headers=None) -> bool:
        kind = stream.split(" ", 1)[0]
        start = time.time()
        try:
            r = c.post("/v1/train" if kind == "train" else "/v1/classify", json=body, headers=headers)
            outcome, wrong = str(r.status_code), ""
            if r.status_code == 200:
                wrong = check(r.json())
            elif r.status_code >= 500 and not is_error_body(r):
                wrong = f"{r.status_code} without Jina's error body: {r.text[:120]}"
        except httpx.HTTPError as exc:  # a connection that a killed proxy held
            outcome, wrong = type(exc).__name__, ""
        with self._lock:
            self.events.append(Event(start, time.time(), kind, stream, outcome, wrong))
        return outcome == "200" and not wrong

    def _zero_shot(self, n):
        body = {"model": GPU_MODEL, "labels": LABELS,
                "input": [f"{WEATHER[i % len(WEATHER)]} ({i})" for i in range(self.inputs)]}

        def check(resp):
            got = {d["prediction"] for d in resp["data"]}
            return "" if got == {"weather"} and len(resp["data"]) == self.inputs else f"zero-shot answered {got}"

        with self._client(self.key) as c:
            while not self.stop.is_set():
                self._post(c, f"zero-shot #{n}", body, check)

    def _few_shot(self, cid):
        def check(resp):
            got = resp["data"][0]["prediction"]
            return "" if got == "weather" else f"few-shot {cid} answered {got}"

        with self._client(self.keys.get(cid, self.key)) as c:
            while not self.stop.is_set():
                self._post(c, f"few-shot {cid}", {"classifier_id": cid, "input": [FEW_SHOT_PROBE]}, check)

    def _train(self, cid):
        def check(resp):
            return "" if resp.get("classifier_id") == cid else f"train answered {resp}"

        with self._client(self.keys.get(cid, self.key)) as c:
            i = 0
            while not self.stop.is_set():
                text, label = UPDATES[i % len(UPDATES)]
                body = {"classifier_id": cid, "input": [{"text": f"{text} ({i})", "label": label}]}
                deadline = time.time() + 180  # the same key until acknowledged (bounded), even after stop
                while True:
                    if self._post(c, f"train {cid}", body, check, headers={"Idempotency-Key": f"{cid}-{i}"}):
                        self.acknowledged[cid] += 1
                        break
                    if time.time() > deadline:
                        self.unacknowledged[cid] += 1
                        break
                    time.sleep(0.3)
                i += 1

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=240)

    # -- what happened ---------------------------------------------------------------------------------------
    def between(self, start: float = 0.0, end: float = float("inf")) -> list[Event]:
        with self._lock:
            return [e for e in self.events if start <= e.end <= end]

    def wrong(self) -> list[str]:
        return [e.wrong for e in self.between() if e.wrong]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[Event]:
        return [e for e in self.between(start, end) if e.outcome != "200"]

    def outcomes(self) -> dict[str, int]:
        out: dict[str, int] = defaultdict(int)
        for e in self.between():
            out[f"{e.kind} {e.outcome}"] += 1
        return dict(sorted(out.items()))

    def max_latency(self, start: float = 0.0, end: float = float("inf"), kind: str | None = None) -> float:
        return max((e.end - e.start for e in self.between(start, end) if kind in (None, e.kind)), default=0.0)

    def served_again(self, since: float) -> dict[str, float]:
        """Per client: seconds from ``since`` until its first right answer to a request it sent after ``since``
        (a request held across the fault, or failed and retried, counts until a fresh one succeeds)."""
        out = {}
        for e in sorted(self.between(since), key=lambda e: e.end):
            if e.stream not in out and e.start >= since and e.outcome == "200" and not e.wrong:
                out[e.stream] = e.end - since
        return out
