"""``mmpretrain cluster``: a real head + worker on this machine, token auth on.

One cluster for the module (the ``local_cluster`` fixture); the last test stops it with
``mmpretrain cluster down`` while another Ray runs beside it, and checks that only its own
processes went.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from mmpretrain import cli
from mmpretrain.local_cluster import ClusterInfo, live_nodes
from tests.integration.cluster_fixture import CPUS_PER_NODE, LocalCluster

pytestmark = pytest.mark.integration


def http_get(url: str, token: str | None = None) -> int:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def cluster_processes(info: ClusterInfo) -> list[psutil.Process]:
    """The cluster's processes as this test sees them, independently of ``own_processes``:
    the recorded pids, anything naming a node dir or the GCS port, and their children."""
    found: dict[int, psutil.Process] = {}
    for node in info.nodes:
        for pid in node.pids:
            with contextlib.suppress(psutil.NoSuchProcess):
                found[pid] = psutil.Process(pid)
    for proc in psutil.process_iter(["cmdline"]):
        text = " ".join(proc.info["cmdline"] or [])
        if str(info.state_dir) + "/n" in text or f":{info.gcs_port}" in text:
            found[proc.pid] = proc
    for proc in list(found.values()):
        with contextlib.suppress(psutil.NoSuchProcess):
            found.update({child.pid: child for child in proc.children(recursive=True)})
    found.pop(os.getpid(), None)
    return [p for p in found.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_two_nodes_alive_each_with_its_cpus_and_resource(local_cluster: LocalCluster) -> None:
    info = local_cluster.info
    nodes = live_nodes(info)
    assert len(nodes) == 2
    for node in info.nodes:
        (live,) = [n for n in nodes if node.resource in n["resources_total"]]
        assert live["resources_total"]["CPU"] == CPUS_PER_NODE
        assert live["is_head_node"] == (node.index == 0)
    # Each node runs in its own temp dir, under the state dir, and none in Ray's default one.
    for node in info.nodes:
        assert (node.temp_dir / "session_latest" / "logs").is_dir()


def test_token_guards_the_jobs_api_and_only_loopback_serves_it(
    local_cluster: LocalCluster,
) -> None:
    info = local_cluster.info
    mode = stat.S_IMODE(info.token_path.stat().st_mode)
    assert mode == 0o600, oct(mode)
    assert stat.S_IMODE(info.state_dir.stat().st_mode) == 0o700
    # Not Ray's shared ~/.ray/auth_token: the cluster's token is its own.
    default = Path.home() / ".ray" / "auth_token"
    assert not default.exists() or default.read_text().strip() != local_cluster.token

    jobs = f"{info.dashboard_url}/api/jobs/"
    assert http_get(jobs) == 401
    assert http_get(jobs, "0" * 64) == 403
    assert http_get(jobs, local_cluster.token) == 200

    listening = [
        conn.laddr.ip
        for conn in psutil.net_connections("tcp")
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == info.dashboard_port
    ]
    assert listening and set(listening) == {"127.0.0.1"}, listening


def test_metrics_are_open_and_prometheus_finds_every_node(local_cluster: LocalCluster) -> None:
    info = local_cluster.info
    for node in info.nodes:  # Prometheus scrapes without a token
        assert http_get(f"http://127.0.0.1:{node.metrics_export_port}/metrics") == 200
    # The head rewrites the service-discovery file every few seconds as nodes come and go.
    want = {node.metrics_export_port for node in info.nodes}
    want |= {info.autoscaler_metrics_port, info.dashboard_metrics_port}  # the head's own two
    deadline, ports = time.monotonic() + 30, set()
    while time.monotonic() < deadline:
        if info.sd_file.exists():
            targets = [
                t for group in json.loads(info.sd_file.read_text()) for t in group["targets"]
            ]
            ports = {int(t.rsplit(":", 1)[1]) for t in targets}
            if want <= ports:
                break
        time.sleep(1)
    assert want <= ports, (want, ports)


def test_a_driver_with_the_client_env_reaches_both_nodes(local_cluster: LocalCluster) -> None:
    """RAY_ADDRESS + the token file are all ``ray.init()`` needs; each node takes its task."""
    script = """
import json, ray
ray.init(log_to_driver=False)
@ray.remote(num_cpus=0.5)
def where():
    return ray.get_runtime_context().get_node_id()
nodes = [ray.get(where.options(resources={f"mmpretrain_node_{i}": 0.01}).remote()) for i in (0, 1)]
print(json.dumps({"nodes": nodes, "cpus": ray.cluster_resources()["CPU"]}))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=local_cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(set(result["nodes"])) == 2
    assert result["cpus"] == 2 * CPUS_PER_NODE

    # The GCS listens on every address, so the token is what keeps others out: without it,
    # `ray status` is refused (ray.init would be too, after 20 s of retries).
    ray_cli = str(Path(sys.executable).parent / "ray")
    env = {**local_cluster.env, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_AUTH_TOKEN_PATH")
    address = local_cluster.info.gcs_address
    refused = subprocess.run(
        [ray_cli, "status", "--address", address], env=env, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "InvalidAuthToken" in refused.stderr, refused.stderr[-500:]


def test_cli_status_env_and_a_second_up(local_cluster: LocalCluster, capsys) -> None:
    info = local_cluster.info
    d = str(info.state_dir)
    assert cli.main(["cluster", "status", "--dir", d]) == 0
    out = capsys.readouterr().out
    assert "2/2 nodes alive" in out
    assert f"RAY_SD_FILE={info.sd_file} cluster/prometheus/run.sh" in out

    assert cli.main(["cluster", "env", "--dir", d]) == 0
    exports = capsys.readouterr().out
    shell = subprocess.run(
        ["bash", "-c", f'eval "{exports}"; echo "$RAY_ADDRESS $RAY_API_SERVER_ADDRESS"'],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shell.stdout.split() == [info.gcs_address, info.dashboard_url]

    assert cli.main(["cluster", "up", "--dir", d]) == 1
    err = capsys.readouterr().err
    assert "already running" in err and "cluster down" in err
    assert len(live_nodes(info)) == 2  # the refused `up` left the running cluster alone


def test_down_stops_its_own_processes_and_no_other_ray(
    local_cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory, capsys
) -> None:
    """Last in the module: it stops the module's cluster (the fixture's ``down`` then finds
    nothing). Another Ray runs beside it, as a user's or a colleague's would."""
    info = local_cluster.info
    other_dir = tmp_path_factory.mktemp("other")
    other = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import ray, sys, time\n"
            "ray.init(address='local', num_cpus=1, include_dashboard=False,"
            f" _temp_dir={str(other_dir)!r})\n"
            "print('ready', flush=True)\n"
            "time.sleep(600)\n",
        ],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert other.stdout.readline().strip() == "ready"
        others = psutil.Process(other.pid).children(recursive=True)
        assert {"gcs_server", "raylet"} <= {p.name() for p in others}

        before = cluster_processes(info)
        assert len(before) >= 5  # gcs_server, two raylets, the dashboard, agents

        assert cli.main(["cluster", "down", "--dir", str(info.state_dir)]) == 0
        assert "stopped the cluster" in capsys.readouterr().out
        left = [p for p in before if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(p.pid, p.name()) for p in left]
        assert not cluster_processes(info)
        assert all(p.is_running() for p in others), "down stopped another Ray"
        assert other.poll() is None

        assert cli.main(["cluster", "down", "--dir", str(info.state_dir)]) == 0
        assert "nothing to stop" in capsys.readouterr().out
    finally:
        other.terminate()
        other.wait(timeout=60)
