"""``mmpretrain cluster``'s planning and refusals, without starting Ray."""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmpretrain.errors import ClusterError, ResourceError
from mmpretrain.local_cluster import (
    MAX_TEMP_DIR_CHARS,
    WORKER_PORT_REGION,
    ClusterInfo,
    client_env,
    down,
    export_lines,
    node_args,
    plan_nodes,
    read_info,
    status,
    summary,
    up,
    write_token,
)


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) if "=" in arg else (arg, "") for arg in args)


def test_every_node_gets_ports_and_a_temp_dir_of_its_own(tmp_path: Path) -> None:
    plan = plan_nodes(tmp_path, workers=3, cpus_per_node=2, rng=random.Random(0))
    ports = [
        plan.gcs_port,
        plan.client_server_port,
        plan.autoscaler_metrics_port,
        plan.dashboard_metrics_port,
    ]
    for node in plan.nodes:
        ports += [node.node_manager_port, node.object_manager_port, node.metrics_export_port]
    assert len(ports) == len(set(ports)) and not {8265, 44217, 44227, 52365} & set(ports)
    ranges = sorted((n.min_worker_port, n.max_worker_port) for n in plan.nodes)
    for (_, high), (low, _) in itertools.pairwise(ranges):
        assert high < low  # disjoint
    low, high = WORKER_PORT_REGION  # outside Ray's default worker range and the ephemeral one
    assert all(low <= a and b < high for a, b in ranges)
    assert len({n.temp_dir for n in plan.nodes}) == 4
    assert [n.resource for n in plan.nodes] == [f"mmpretrain_node_{i}" for i in range(4)]


def test_ray_start_arguments_of_head_and_worker(tmp_path: Path) -> None:
    plan = plan_nodes(tmp_path, workers=1, cpus_per_node=3, head_port=16379)
    assert plan.gcs_port == 16379
    head, worker = (flags(node_args(n, plan.gcs_port, 18265, 10101)) for n in plan.nodes)
    assert "--head" in head and head["--port"] == "16379"
    assert head["--dashboard-host"] == "127.0.0.1" and head["--dashboard-port"] == "18265"
    assert head["--ray-client-server-port"] == "10101"
    assert worker["--address"] == "127.0.0.1:16379"
    assert not {"--head", "--port", "--dashboard-port", "--include-dashboard"} & set(worker)
    for node, args in zip(plan.nodes, (head, worker), strict=True):
        assert args["--num-cpus"] == "3"
        assert json.loads(args["--resources"]) == {node.resource: 1}
        assert args["--temp-dir"] == str(node.temp_dir)
        assert args["--dashboard-agent-listen-port"] == "0"
        assert args["--metrics-export-port"] == str(node.metrics_export_port)
        assert args["--min-worker-port"] == str(node.min_worker_port)


def test_client_env_points_ray_init_at_the_gcs_and_jobs_at_the_dashboard(tmp_path: Path) -> None:
    plan = plan_nodes(tmp_path, workers=1, cpus_per_node=1)
    info = ClusterInfo(tmp_path, tmp_path / "auth_token", 7000, 7001, 7002, plan.nodes, 0.0, 1, 2)
    assert client_env(info) == {
        "RAY_ADDRESS": "127.0.0.1:7000",
        "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:7001",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token"),
    }
    assert "export RAY_ADDRESS=127.0.0.1:7000" in export_lines(info).splitlines()
    assert ClusterInfo.from_json(json.loads(json.dumps(info.to_json()))) == info


def test_status_text_marks_a_dead_node_and_says_why_the_head_is_silent(tmp_path: Path) -> None:
    """The text ``mmpretrain cluster status`` prints, built from a head's answer without a head."""
    plan = plan_nodes(tmp_path, workers=1, cpus_per_node=2)
    info = ClusterInfo(tmp_path, tmp_path / "auth_token", 7000, 7001, 7002, plan.nodes, 0.0, 1, 2)
    head = {"node_ip": "10.0.0.5", "resources_total": {"CPU": 2.0, "mmpretrain_node_0": 1.0}}
    lines = summary(info, [head]).splitlines()
    assert lines[0] == f"cluster in {tmp_path}: 1/2 nodes alive"
    assert lines[1].startswith("  node 0 head   10.0.0.5  CPU 2  mmpretrain_node_0=1")
    assert lines[2].startswith("  node 1 worker NOT ALIVE (logs: ")
    assert export_lines(info) in summary(info, [head])
    silent = summary(info, [], unreachable="connection refused").splitlines()[0]
    assert silent.endswith("0/2 nodes alive (the head did not answer: connection refused)")


def test_token_file_is_created_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        path = write_token(tmp_path / "auth_token")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_text()) == 64
    with pytest.raises(FileExistsError):  # never written into a file someone else made
        write_token(path)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Short enough for Ray's socket paths, which pytest's tmp_path is not."""
    path = Path(tempfile.mkdtemp(prefix="mmpc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_up_refuses_a_port_in_use_before_starting_anything(short_dir: Path) -> None:
    state_dir = short_dir / "c"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ClusterError, match=f"port {port} .*already in use"):
            up(state_dir, dashboard_port=port)
    assert not state_dir.exists()


def test_up_refuses_a_state_dir_too_long_for_rays_sockets(short_dir: Path) -> None:
    state_dir = Path("/tmp") / ("x" * MAX_TEMP_DIR_CHARS)
    with pytest.raises(ClusterError, match="too long"):
        up(state_dir)
    with pytest.raises(ClusterError, match="workers"):
        up(short_dir, cpus_per_node=0)


def test_nothing_to_stop_or_show_in_an_empty_dir(tmp_path: Path) -> None:
    assert down(tmp_path).startswith("nothing to stop")
    assert issubclass(ClusterError, ResourceError)  # the CLI prints it without a traceback
    with pytest.raises(ClusterError, match="cluster up"):
        status(tmp_path)
    with pytest.raises(ClusterError, match="no cluster"):
        read_info(tmp_path)
