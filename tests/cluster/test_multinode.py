"""The app on a multi-node Ray cluster (tests/cluster/harness.py: cluster.yaml's node types under Ray's own
autoscaler, the GPU Serve config deployed with `serve deploy`), shown under load. The tests run in this order
and each starts from the state it needs:

1. placement: where Ray put every replica and actor, read from Ray's state API;
2. autoscaling: Serve asks for more embedder replicas than the GPU nodes hold, the autoscaler launches a GPU node,
   the new replica serves; after the load, the replicas and then the node go away; every answer right;
3. node loss: a GPU worker holding embedder replicas and state shards is SIGKILLed (raylet and workers) while
   clients classify and train; no wrong answer, every acknowledged /train there afterwards, recovery timed, the
   shards re-created on other nodes from the store;
4. rolling upgrade: a new version of the Serve config deployed under load;
5. shared store: every node on one store, a local directory and an S3 server on 127.0.0.1.

Times are measured and reported (the "cluster summary" at the end of the run), never asserted: waits are bounded
so a broken cluster fails instead of hanging.
"""
from __future__ import annotations

import time

import pytest
import ray

from tests.cluster.harness import (
    CPU_EMBEDDER,
    CPU_MODEL,
    EMBEDDER,
    GPU_MODEL,
    LABELS,
    SEED,
    ClusterApp,
    Load,
    actors,
    describe_embedders,
    gpu_nodes,
    kill_node,
    nodes,
    placement,
    replica_states,
    replicas,
    replicas_per_gpu_node,
    shard_index,
    shards,
    wait_for,
)

pytestmark = pytest.mark.cluster
RETRYABLE = {"503", "504"}  # Jina-bodied retryable errors; a /train also may get 409 while its first try still runs


def settle(app: ClusterApp, *, one_gpu_node: bool) -> None:
    """The base config deployed, the embedder at its minimum (1), and (if asked) a single GPU node."""
    app.deploy(app.config())
    seen = describe_embedders(app.store_url)
    wait_for("the embedder back at 1 replica", lambda: replica_states(EMBEDDER) == {"RUNNING": 1}, 240, describe=seen)
    if one_gpu_node:
        wait_for("a single GPU node", lambda: len(gpu_nodes()) == 1, 240, describe=seen)


def record_placement(record, store_url: str, title: str) -> None:
    record(title)
    for node, what in placement(store_url).items():
        record(f"  {node:<17} {', '.join(what) or '-'}")


def where(names_to_nodes: dict[str, str], labels: dict[str, str]) -> list[str]:
    """["<replica or shard>@<node label>", ...] (a replica's name is SERVE_REPLICA::app#deployment#id)."""
    return sorted(f"{n.split('#', 1)[-1]}@{labels.get(v, v[-5:])}" for n, v in names_to_nodes.items())


def short(per_classifier: dict) -> dict:
    return {k[:8]: v for k, v in sorted(per_classifier.items())}


def not_retryable(load: Load) -> list[str]:
    bad = []
    for e in load.failures():
        if e.outcome in RETRYABLE or (e.kind == "train" and e.outcome == "409") or not e.outcome.isdigit():
            continue  # not e.outcome.isdigit(): a connection error (a killed proxy held it); a client retries
        bad.append(f"{e.kind} {e.outcome}")
    return bad


def test_placement_gpu_embedders_on_gpu_nodes_cpu_work_on_cpu_nodes_shards_spread(app, record):
    keys = app.keys()
    app.touch_all_shards(keys)  # every state shard exists (placed by Ray, SPREAD)
    with app.client(keys.by_shard[0]) as c:
        for model in (GPU_MODEL, CPU_MODEL):
            r = c.post("/v1/classify", json={"model": model, "input": ["Heavy rain expected tomorrow."], "labels": LABELS})
            assert r.status_code == 200 and r.json()["data"][0]["prediction"] == "weather", r.text
    ns = nodes()
    record_placement(record, app.store_url, "node (type:id)   what runs there (Ray state API)")
    embedders, ingress, cpu_embedders = replicas(EMBEDDER), replicas("Ingress"), replicas(CPU_EMBEDDER)
    assert embedders and all(ns[a.node_id].kind == "gpu_worker" for a in embedders), embedders
    assert len(ingress) >= 2 and all(ns[a.node_id].cpu for a in ingress), ingress
    assert cpu_embedders and all(ns[a.node_id].cpu for a in cpu_embedders), cpu_embedders
    state = shards(app.store_url)
    num_shards = app.deployed["applications"][0]["args"]["state"]["num_shards"]
    assert sorted(shard_index(s) for s in state) == list(range(num_shards)), state
    assert len({s.node_id for s in state}) >= 2, f"state shards not spread over nodes: {state}"
    (controller,) = [a for a in actors() if a.cls == "ServeController"]
    assert ns[controller.node_id].kind == "head"


def test_autoscaling_adds_a_gpu_node_under_load_and_removes_it_after(app, record):
    settle(app, one_gpu_node=True)
    keys = app.keys()
    before = {n.node_id for n in gpu_nodes()}
    capacity = replicas_per_gpu_node() * len(before)
    # In place (a `deployments:` change, no restart): one replica more than the GPU nodes hold, scaling at 1 request
    # in flight per replica so that 8 clients ask for all of them.
    scaled = app.config(embedder_scaling={"max_replicas": capacity + 1, "target_ongoing_requests": 1})
    app.deploy(scaled)
    record(f"GPU nodes hold {capacity} embedder replicas (GPU 1 per node / num_gpus 0.25); max_replicas {capacity + 1}")
    marks: dict[str, float] = {}
    with Load(app.url, keys.by_shard[0], zero_shot=8, inputs=16) as load:
        t0 = time.time()
        wait_for("Serve asking for more embedder replicas than the GPU nodes hold",
                 lambda: sum(replica_states(EMBEDDER).values()) > capacity, 120)
        marks["Serve asks for a replica that does not fit"] = time.time() - t0
        new = wait_for("the autoscaler launching a GPU node",
                       lambda: [n for n in gpu_nodes() if n.node_id not in before], 120)[0]
        marks["autoscaler's new GPU node joins"] = time.time() - t0
        on_new = wait_for("an embedder replica RUNNING on the new node", lambda: (
            replica_states(EMBEDDER) == {"RUNNING": capacity + 1}
            and [r for r in replicas(EMBEDDER) if r.node_id == new.node_id]), 240,
            describe=describe_embedders(app.store_url))[0]
        marks["its replica RUNNING"] = time.time() - t0
        wait_for("the new replica serving requests", lambda: app.served_by_replica(keys).get(on_new.pid, 0), 60)
        marks["its replica has served requests"] = time.time() - t0
        record_placement(record, app.store_url, f"at the peak ({time.time() - t0:.0f} s into the load)")
        time.sleep(3)
        served = app.served_by_replica(keys).get(on_new.pid, 0)
    stopped = time.time()
    wait_for("the embedder back at 1 replica", lambda: replica_states(EMBEDDER) == {"RUNNING": 1}, 240)
    marks_down = {"replicas back to 1": time.time() - stopped}
    wait_for("the new GPU node removed", lambda: new.node_id not in nodes(), 240)
    marks_down["the new GPU node removed"] = time.time() - stopped
    app.deploy(app.config())  # the base scaling again (in place)
    for what, s in marks.items():
        record(f"{what:<45} {s:6.1f} s after the load started")
    for what, s in marks_down.items():
        record(f"{what:<45} {s:6.1f} s after the load stopped")
    record(f"new node {new.label}: its replica (pid {on_new.pid}) served {served} requests; requests {load.outcomes()}")
    assert not load.wrong(), load.wrong()[:5]
    assert not load.failures(), [(e.kind, e.outcome) for e in load.failures()][:10]


def test_node_loss_under_load_recovers_on_the_remaining_nodes(app, record):
    settle(app, one_gpu_node=True)
    keys = app.keys()
    app.touch_all_shards(keys)
    (victim,) = gpu_nodes()
    state = shards(app.store_url)
    on_victim = [s for s in state if s.node_id == victim.node_id]
    elsewhere = [s for s in state if s.node_id != victim.node_id]
    assert on_victim and elsewhere, f"shards: {state}"
    lost_shard, kept_shard = shard_index(on_victim[0]), shard_index(elsewhere[0])
    lost_cids = app.create_classifiers(keys.by_shard[lost_shard], 2)
    kept_cids = app.create_classifiers(keys.by_shard[kept_shard], 1)
    owner = {**{c: keys.by_shard[lost_shard] for c in lost_cids}, **{c: keys.by_shard[kept_shard] for c in kept_cids}}
    capacity = replicas_per_gpu_node()
    try:
        # In place: one replica more than the victim holds, so the victim is full and another GPU node serves too.
        # (max_replicas too: the config's own maximum for this model is one GPU node's worth)
        app.deploy(app.config(embedder_scaling={"min_replicas": capacity + 1, "max_replicas": capacity + 1}), wait=False)
        wait_for("the embedder on two GPU nodes", lambda: (
            replica_states(EMBEDDER) == {"RUNNING": capacity + 1}
            and len({r.node_id for r in replicas(EMBEDDER)}) == 2), 240, describe=describe_embedders(app.store_url))
        record_placement(record, app.store_url, f"before: {victim.label} is killed")
        before = {c: app.samples(k)[c] for c, k in owner.items()}
        marks: dict[str, float] = {}
        with Load(app.url, keys.by_shard[lost_shard], zero_shot=2, inputs=4, few_shot=[lost_cids[0], kept_cids[0]],
                  train=list(owner), keys=owner) as load:
            time.sleep(4)
            t_kill = time.time()
            killed = kill_node(victim.node_id)
            wait_for("Ray marking the killed node dead", lambda: victim.node_id not in nodes(), 120)
            marks["Ray marks the node dead"] = time.time() - t_kill
            wait_for("the lost shards alive on other nodes", lambda: {
                shard_index(s) for s in shards(app.store_url) if s.node_id != victim.node_id
            } >= {shard_index(s) for s in on_victim}, 180)
            marks["lost shards alive on other nodes"] = time.time() - t_kill
            wait_for("the embedder back to its replicas", lambda: replica_states(EMBEDDER) == {"RUNNING": capacity + 1},
                     300, describe=describe_embedders(app.store_url))
            marks["embedder back to all its replicas"] = time.time() - t_kill
            time.sleep(5)  # answers after the recovery
        failures = load.failures(t_kill)
        record_placement(record, app.store_url, f"after: {victim.label} killed ({killed} processes, SIGKILL)")
        if failures:
            marks[f"first of {len(failures)} failed requests"] = min(e.end for e in failures) - t_kill
            marks["last failed request (error window ends)"] = max(e.end for e in failures) - t_kill
        again = load.served_again(t_kill)
        lost = {f"{kind} {c}" for kind in ("few-shot", "train") for c in lost_cids}
        for what, streams in (("zero-shot clients", [k for k in again if k.startswith("zero-shot")]),
                              ("clients of the lost shards' classifiers", [k for k in again if k in lost]),
                              ("clients of the other shard's classifier", [k for k in again if k not in lost
                                                                           and not k.startswith("zero-shot")])):
            marks[f"{what} served again (slowest)"] = max(again[k] for k in streams)
        for what, s in sorted(marks.items(), key=lambda kv: kv[1]):
            record(f"{what:<64} {s:6.1f} s after the kill")
        record(f"recovery time (every client served again): {max(again.values()):.1f} s; slowest answer "
               f"{load.max_latency(t_kill):.1f} s; requests {load.outcomes()}")
        assert set(again) == {e.stream for e in load.between()}, "a client never got an answer after the kill"
        assert not load.wrong(), load.wrong()[:5]
        assert not not_retryable(load), not_retryable(load)[:10]
        after = {c: app.samples(k)[c] for c, k in owner.items()}
        record(f"acknowledged /train {short(load.acknowledged)}; samples before {short(before)}, after {short(after)}")
        assert not load.unacknowledged, load.unacknowledged
        for c in owner:
            assert after[c] == before[c] + load.acknowledged[c], (c, before[c], load.acknowledged[c], after[c])
        restarted = {shard_index(s): s for s in shards(app.store_url)}
        for lost_actor in on_victim:
            now = restarted[shard_index(lost_actor)]
            assert now.node_id != victim.node_id and now.restarts >= 1, now
        for c in lost_cids:  # the lost shard's memory died with it: these answers come from the store
            assert app.few_shot_ok(owner[c], c)
    finally:
        app.deploy(app.config(), wait=False)  # min_replicas back to 1 (in place)


def test_rolling_upgrade_under_load_fails_no_request_and_keeps_state(app, record):
    settle(app, one_gpu_node=False)
    keys = app.keys()
    cids = app.create_classifiers(keys.by_shard[0], 2)
    old = {a.name: a.node_id for d in ("Ingress", CPU_EMBEDDER, EMBEDDER) for a in replicas(d)}
    before = app.samples(keys.by_shard[0])
    labels = {n.node_id: n.label for n in nodes().values()}
    # A new version: any change under `args` (here the MiniLM batch size) replaces every replica (docs/deploy.md).
    upgrade = app.config(args_changes={f"embedder_overrides.{GPU_MODEL}.max_batch_size": 32})
    with Load(app.url, keys.by_shard[0], zero_shot=2, inputs=4, few_shot=cids[:1], train=cids) as load:
        time.sleep(3)
        t0 = time.time()
        took = app.deploy(upgrade)
        time.sleep(3)
    new = {a.name: a.node_id for d in ("Ingress", CPU_EMBEDDER, EMBEDDER) for a in replicas(d)}
    after = app.samples(keys.by_shard[0])
    labels.update({n.node_id: n.label for n in nodes().values()})  # nodes the autoscaler added for the surge
    record(f"old replicas {where(old, labels)}")
    record(f"new replicas {where(new, labels)}")
    slowest = {k: round(load.max_latency(t0, kind=k), 1) for k in ("zero-shot", "few-shot", "train")}
    record(f"`serve deploy` to every replica replaced: {took:.1f} s; requests {load.outcomes()}; "
           f"slowest answer during it per kind {slowest} s (requests wait for a replacement, none fail)")
    record(f"acknowledged /train {short(load.acknowledged)}; samples before {short(before)}, after {short(after)}")
    assert not set(old) & set(new), "replicas of the old version still running"
    assert not load.wrong(), load.wrong()[:5]
    assert not load.failures(), [(e.kind, e.outcome) for e in load.failures()][:10]
    for c in cids:
        assert after[c] == before[c] + load.acknowledged[c]


@pytest.mark.parametrize("which", ["local directory", "s3"])
def test_every_node_shares_one_store(app, s3_store, which, record):
    url = app.store_url if which == "local directory" else s3_store
    app.deploy(app.config(store_url=url))
    keys = app.keys(url)
    app.touch_all_shards(keys)
    labels = {n.node_id: n.label for n in nodes().values()}
    state = shards(url)
    record(f"{url}: shards on {where({f'shard-{shard_index(s)}': s.node_id for s in state}, labels)}")
    assert len({s.node_id for s in state}) >= 2, state
    cids = {i: app.create_classifiers(keys.by_shard[i], 1)[0] for i in sorted(keys.by_shard)}
    from classifiers.storage.store import open_blob_store

    stored = set(open_blob_store(url).list("classifiers"))
    assert {f"{c}.npz" for c in cids.values()} <= stored, "a shard's classifier is not in the shared store"
    # Kill every shard: Ray restarts each (SPREAD again); their state can only come back from the store.
    for s in state:
        ray.kill(ray.get_actor(s.name, namespace="ray-classifier"), no_restart=False)
    wait_for("every shard restarted", lambda: len([s for s in shards(url) if s.restarts >= 1]) == len(state), 120)
    for i, c in cids.items():
        assert wait_for(f"classifier {c} answering again", lambda c=c, i=i: app.few_shot_ok(keys.by_shard[i], c), 60)
        assert app.samples(keys.by_shard[i])[c] == sum(len(v) for v in SEED.values())
    again = {f"shard-{shard_index(s)}": s.node_id for s in shards(url)}
    labels.update({n.node_id: n.label for n in nodes().values()})
    record(f"every shard killed and restarted: {where(again, labels)}; its classifier answers, from the store")
