"""The cloud cluster definitions (`ray up cluster/aws.yaml`, `cluster/gcp.yaml`) and the node
image (cluster/docker/Dockerfile).

No cloud and no Ray cluster here: Ray's own launcher code fills in the provider defaults and
validates each file against its schema, and the assertions guard what a reviewer of a GPU
cluster must not have to re-check by eye: no training on the head, dashboard and Jobs API on
loopback only, token auth on every `ray start`, Ray pinned to the version this project is
tested with (not the nightly the provider defaults install), and an image that carries the
package but no secret.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import ray
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

from mmpretrain.config import load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
DOCKERFILE = CLUSTER / "docker" / "Dockerfile"

# The GPU node each cloud's workers must be: 8x H100 (80GB) per node.
GPU_MACHINE = {
    "aws": ("InstanceType", "p5.48xlarge"),
    "gcp": ("machineType", "a3-highgpu-8g"),
}
# Where the user keeps the cluster token (the file the README and the YAML comments tell them
# to create with mode 0600); never Ray's own ~/.ray/auth_token.
LOCAL_TOKEN = "~/.ray/mmpretrain_auth_token"
OBJECT_STORE = {"aws": "s3://BUCKET/runs", "gcp": "gs://BUCKET/runs"}

RAY_PIN = re.compile(r"""\bray\[([^\]]*)\]==([^\s"']+)""")
RAY_IMAGE = re.compile(r"^rayproject/ray:(\d+\.\d+\.\d+)-py3\d+-cu\d+$")


@pytest.fixture(params=sorted(GPU_MACHINE))
def cloud(request: pytest.FixtureRequest) -> str:
    return request.param


def _raw(cloud: str) -> dict:
    return yaml.safe_load((CLUSTER / f"{cloud}.yaml").read_text())


def _prepared(cloud: str) -> dict:
    """The config as `ray up` sees it: provider defaults merged in, setup commands joined."""
    return prepare_config(_raw(cloud))


def _ray_start(commands: list[str]) -> str:
    starts = [c for c in commands if "ray start" in c]
    assert len(starts) == 1, f"expected one `ray start` command, found {starts}"
    return " ".join(starts[0].split())


def _start_commands(config: dict) -> dict[str, str]:
    return {
        "head": _ray_start(config["head_start_ray_commands"]),
        "worker": _ray_start(config["worker_start_ray_commands"]),
    }


def _worker_types(config: dict) -> dict[str, dict]:
    head = config["head_node_type"]
    return {name: t for name, t in config["available_node_types"].items() if name != head}


def _setup_lists(config: dict) -> dict[str, list[str]]:
    """Every list of setup commands a node can run (a node type may override the workers')."""
    lists = {
        "head": config["head_setup_commands"],
        "worker": config["worker_setup_commands"],
    }
    for name, node_type in _worker_types(config).items():
        if "worker_setup_commands" in node_type:
            lists[name] = node_type["worker_setup_commands"]
    return lists


def _images(config: dict) -> list[str]:
    docker = config.get("docker") or {}
    images = [docker[k] for k in ("image", "head_image", "worker_image") if k in docker]
    for node_type in config["available_node_types"].values():
        if "worker_image" in node_type.get("docker", {}):
            images.append(node_type["docker"]["worker_image"])
    return images


def _installed_ray() -> str:
    return ray.__version__


def _pyproject_ray() -> Requirement:
    # A quoted requirement in [project] dependencies (tomllib is 3.11+; the project runs on 3.10).
    specs = re.findall(r'^\s*"(ray\[[^"]*)"', (REPO / "pyproject.toml").read_text(), re.MULTILINE)
    assert len(specs) == 1, specs
    return Requirement(specs[0])


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, args = line.partition(" ")
            pairs.append((instruction.upper(), " ".join(args.split())))
    return pairs


def test_ray_validator_accepts_the_definition(cloud: str) -> None:
    config = _prepared(cloud)
    validate_config(config)  # Ray's schema plus its own consistency checks; raises if wrong
    assert config["provider"]["type"] == cloud


def test_head_does_no_training(cloud: str) -> None:
    config = _prepared(cloud)
    head_start = _start_commands(config)["head"]
    assert "--head" in head_start
    assert "--num-cpus=0" in head_start
    # The launcher hands a node type's resources to `ray start` in RAY_OVERRIDE_RESOURCES, which
    # wins over its flags: a CPU count here would quietly undo --num-cpus=0.
    head_resources = config["available_node_types"][config["head_node_type"]]["resources"]
    assert head_resources.get("CPU") == 0
    assert head_resources.get("GPU", 0) == 0


def test_dashboard_and_jobs_api_listen_on_loopback_only(cloud: str) -> None:
    config = _prepared(cloud)
    for role, command in _start_commands(config).items():
        assert "--dashboard-host=127.0.0.1" in command, role
    # The provider defaults bind the dashboard to every interface; nothing of that may remain.
    assert "0.0.0.0" not in yaml.safe_dump(config)


def test_every_ray_start_uses_the_mounted_token(cloud: str) -> None:
    config = _prepared(cloud)
    mounted = [remote for remote, local in config["file_mounts"].items() if local == LOCAL_TOKEN]
    assert len(mounted) == 1, f"{LOCAL_TOKEN} must be mounted once: {config['file_mounts']}"
    token = mounted[0]
    assert token != "~/.ray/auth_token"  # Ray writes that one itself, world-readable
    for role, command in _start_commands(config).items():
        env = command[: command.index("ray start")]
        assert re.search(r"\bRAY_AUTH_MODE=token\b", env), role
        path = re.search(r"\bRAY_AUTH_TOKEN_PATH=(\S+?);?(\s|$)", env)
        assert path, role
        assert path.group(1).replace("$HOME/", "~/") == token, role
    for role, commands in _setup_lists(config).items():
        assert f"chmod 600 {token}" in commands, role
    assert "RAY_AUTH_MODE=disabled" not in yaml.safe_dump(config)


def test_ray_is_pinned_to_the_installed_version(cloud: str) -> None:
    config = _prepared(cloud)
    installed = _installed_ray()
    required = _pyproject_ray()
    assert required.specifier.contains(installed), (str(required), installed)
    for role, commands in _setup_lists(config).items():
        pins = RAY_PIN.findall(" ".join(commands))
        assert pins, f"{role}: no `ray[...]==X` in {commands}"
        for extras, version in pins:
            assert version == installed, (role, version)
            assert {e.strip() for e in extras.split(",")} == required.extras, role
    text = yaml.safe_dump(config)
    for nightly in ("nightly", "ray-wheels", "dev0", "rayproject/ray:latest"):
        assert nightly not in text, nightly
    images = _images(config)
    assert images, "expected the pinned Ray image in docker"
    for image in images:
        match = RAY_IMAGE.match(image)
        assert match, image
        assert match.group(1) == installed, image


def test_cluster_image_is_the_node_images_base(cloud: str) -> None:
    """Swapping in the image built from cluster/docker/Dockerfile changes no Ray or CUDA."""
    (base,) = [args for instruction, args in _dockerfile() if instruction == "FROM"]
    assert set(_images(_prepared(cloud))) == {base}


def test_gpu_workers_are_8x_h100_nodes(cloud: str) -> None:
    config = _prepared(cloud)
    key, machine = GPU_MACHINE[cloud]
    workers = _worker_types(config)
    assert workers
    for name, node_type in workers.items():
        assert node_type["node_config"][key] == machine, name
        assert node_type["resources"]["GPU"] == 8, name
        assert node_type["resources"]["CPU"] > 0, name  # Ray Data decodes on these
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"], name
        assert 1 <= node_type["max_workers"] <= config["max_workers"], name
        assert "--gpus all" in node_type["docker"]["worker_run_options"], name


def test_the_base_preset_fills_whole_gpu_nodes_and_four_nodes_fit_32_workers(cloud: str) -> None:
    """The YAML comments' node counts: the preset (and jobs/pretrain-base.yaml) is one 8-GPU
    node; train.num_workers=32, the README's 4-node recipe, is the cluster's max_workers."""
    config = _prepared(cloud)
    workers = load_config("base").train.num_workers
    gpus_per_node = {t["resources"]["GPU"] for t in _worker_types(config).values()}
    assert gpus_per_node == {8} and workers % 8 == 0
    assert config["max_workers"] * 8 == 32 >= workers


def test_workers_can_write_the_shared_checkpoint_storage(cloud: str) -> None:
    """A multi-node run resumes only from storage every node sees: the object store."""
    text = (CLUSTER / f"{cloud}.yaml").read_text()
    assert f"train.storage_path={OBJECT_STORE[cloud]}" in text
    for name, node_type in _worker_types(_prepared(cloud)).items():
        node_config = node_type["node_config"]
        if cloud == "aws":
            assert node_config["IamInstanceProfile"].get("Name"), name
        else:
            scopes = {s for account in node_config["serviceAccounts"] for s in account["scopes"]}
            storage = "https://www.googleapis.com/auth/devstorage.read_write"
            assert scopes & {storage, "https://www.googleapis.com/auth/cloud-platform"}, name


def test_every_node_installs_the_synced_checkout(cloud: str) -> None:
    config = _prepared(cloud)
    (checkout,) = [remote for remote, local in config["file_mounts"].items() if local == "."]
    assert ".gitignore" in config["rsync_filter"]  # keeps .venv/ and runs/ off the nodes
    for role, commands in _setup_lists(config).items():
        installs = [c for c in commands if re.search(rf"pip install .*{re.escape(checkout)}$", c)]
        assert installs, f"{role}: {checkout} is never pip-installed"
        assert not any(re.search(r"\s(-e|--editable)\s", c) for c in installs), role


def test_dockerfile_base_is_the_installed_rays_cuda_image() -> None:
    (base,) = [args for instruction, args in _dockerfile() if instruction == "FROM"]
    match = RAY_IMAGE.match(base)
    assert match, f"{base} is not a rayproject/ray:X.Y.Z-py3NN-cuNNN image"
    assert match.group(1) == _installed_ray()


def test_dockerfile_installs_the_copied_package() -> None:
    steps = _dockerfile()
    copied = " ".join(args for instruction, args in steps if instruction == "COPY")
    assert "pyproject.toml" in copied
    assert re.search(r"\bmmpretrain\b", copied)
    installs = [
        args for instruction, args in steps if instruction == "RUN" and "pip install" in args
    ]
    assert installs
    install = installs[0]
    assert re.search(r"pip install [^&]*\s\.(\s|$)", install), install
    assert not re.search(r"\s(-e|--editable)\s", install), install
    pins = RAY_PIN.findall(install)
    assert pins
    assert all(version == _installed_ray() for _, version in pins)


def test_dockerfile_bakes_in_no_token() -> None:
    for instruction, args in _dockerfile():
        if instruction in ("ENV", "ARG"):
            assert not re.search(r"TOKEN|AUTH", args, re.IGNORECASE), args
        if instruction in ("COPY", "ADD"):
            assert not re.search(r"token|\.ray\b", args, re.IGNORECASE), args
