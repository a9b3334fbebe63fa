"""A cluster on paper: its nodes, ports, ``ray start`` arguments and client environment.

Kept apart from ``processes`` so that what a cluster will look like can be read, printed and
tested without starting anything: nothing here runs a process, reads /proc or talks to a node.
The one contact with the machine is asking ``mmpretrain.ports`` which ports are free right now
(a bind on every address), because a plan with a taken port would fail only when Ray starts.
"""

from __future__ import annotations

import json
import random
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain.errors import ClusterError
from mmpretrain.ports import free_ports, port_in_use

RESOURCE_PREFIX = "mmpretrain_node_"
SD_FILE = "prom_metrics_service_discovery.json"

# Worker processes each hold one port. Ranges sit between Ray's default worker range
# (10002-19999, which another Ray on the machine may be using) and the kernel's ephemeral range
# (32768+, where every port picked by "bind to 0" lands), so neither can collide with them.
WORKER_PORTS = 256
WORKER_PORT_REGION = (20000, 32768)


@dataclass(frozen=True)
class NodeInfo:
    """One node of the cluster: what it was started with and the processes it started."""

    index: int  # 0 is the head
    num_cpus: int
    temp_dir: Path  # the node's own Ray temp dir (its logs are under session_latest/logs)
    node_manager_port: int
    object_manager_port: int
    metrics_export_port: int  # Ray's per-node Prometheus endpoint, open without the token
    min_worker_port: int
    max_worker_port: int
    session: int = 0  # session id of the node's processes (its `ray start` ran as leader)
    pids: tuple[int, ...] = ()  # the node's processes right after it started

    @property
    def resource(self) -> str:
        """The custom resource only this node has, to place a task or actor on it."""
        return f"{RESOURCE_PREFIX}{self.index}"


@dataclass(frozen=True)
class ClusterInfo:
    """What ``up`` started, as recorded in ``state_dir/cluster.json``."""

    state_dir: Path
    token_path: Path
    gcs_port: int
    dashboard_port: int
    client_server_port: int
    nodes: tuple[NodeInfo, ...]
    started_at: float  # time.time() before the first node started
    # The head's two other Prometheus endpoints, listed in the SD file beside the nodes'.
    autoscaler_metrics_port: int = 0
    dashboard_metrics_port: int = 0

    @property
    def gcs_address(self) -> str:
        """What ``ray.init``, ``mmpretrain train --address`` and RAY_ADDRESS take."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The dashboard and the Jobs API (RAY_API_SERVER_ADDRESS)."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def sd_file(self) -> Path:
        """Prometheus file service discovery: the head keeps every live node's metrics port in it.

        The head writes it in its session dir and links it from its temp dir, as it links
        /tmp/ray/prom_metrics_service_discovery.json for a default Ray.
        """
        return self.nodes[0].temp_dir / SD_FILE

    def to_json(self) -> dict[str, Any]:
        return {
            "state_dir": str(self.state_dir),
            "token_path": str(self.token_path),
            "gcs_port": self.gcs_port,
            "dashboard_port": self.dashboard_port,
            "client_server_port": self.client_server_port,
            "started_at": self.started_at,
            "autoscaler_metrics_port": self.autoscaler_metrics_port,
            "dashboard_metrics_port": self.dashboard_metrics_port,
            "gcs_address": self.gcs_address,
            "dashboard_url": self.dashboard_url,
            "sd_file": str(self.sd_file),
            "nodes": [
                {**node.__dict__, "temp_dir": str(node.temp_dir), "pids": list(node.pids)}
                for node in self.nodes
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterInfo:
        nodes = tuple(
            NodeInfo(
                **{
                    **node,
                    "temp_dir": Path(node["temp_dir"]),
                    "pids": tuple(node.get("pids", ())),
                }
            )
            for node in data["nodes"]
        )
        return cls(
            state_dir=Path(data["state_dir"]),
            token_path=Path(data["token_path"]),
            gcs_port=data["gcs_port"],
            dashboard_port=data["dashboard_port"],
            client_server_port=data["client_server_port"],
            nodes=nodes,
            started_at=data["started_at"],
            autoscaler_metrics_port=data.get("autoscaler_metrics_port", 0),
            dashboard_metrics_port=data.get("dashboard_metrics_port", 0),
        )


def worker_port_ranges(count: int, rng: random.Random | None = None) -> list[tuple[int, int]]:
    """``count`` disjoint ranges of ``WORKER_PORTS`` ports, each free when looked at.

    A random order of blocks, so two clusters started on one machine (by two users, or a test
    and a user) do not both take the first free block and meet later when workers start.
    """
    rng = rng or random.Random()
    low, high = WORKER_PORT_REGION
    blocks = list(range(low, high - WORKER_PORTS + 1, WORKER_PORTS))
    rng.shuffle(blocks)
    ranges: list[tuple[int, int]] = []
    for start in blocks:
        if len(ranges) == count:
            break
        if not any(port_in_use(port) for port in range(start, start + WORKER_PORTS)):
            ranges.append((start, start + WORKER_PORTS - 1))
    if len(ranges) < count:
        raise ClusterError(
            f"not enough free worker ports in {low}-{high - 1} for {count} nodes "
            f"({WORKER_PORTS} each)"
        )
    return ranges


@dataclass(frozen=True)
class Plan:
    """The ports and nodes of a cluster before anything starts."""

    gcs_port: int
    client_server_port: int
    nodes: tuple[NodeInfo, ...]
    autoscaler_metrics_port: int
    dashboard_metrics_port: int


def plan_nodes(
    state_dir: Path,
    workers: int,
    cpus_per_node: int,
    head_port: int | None = None,
    dashboard_port: int = 8265,
    rng: random.Random | None = None,
) -> Plan:
    """Each node's temp dir and ports, all distinct, before anything starts.

    Why a port per node for everything: the nodes share one machine (one network namespace), so
    two raylets, object managers or metrics agents left to Ray's defaults would ask for the same
    port, and a fixed default (GCS 6379, Ray's worker range, the agent's 52365, the client
    server's 10001, the head's metrics servers' 44217 and 44227) may be held by another Ray on the
    machine; a metrics port taken there is only logged, and the SD file would then send
    Prometheus to the other Ray's endpoint under this cluster's name. Only ports Ray picks at random
    for itself (agents' gRPC, the runtime env agent) are left to it. All free ports are taken in
    one go, so none is handed out twice.
    """
    count = workers + 1
    taken = {dashboard_port, head_port}
    ports = [port for port in free_ports(3 * count + 6) if port not in taken]
    gcs_port = head_port if head_port is not None else ports.pop()
    client_port = ports.pop()
    autoscaler_port, dashboard_metrics_port = ports.pop(), ports.pop()
    ranges = worker_port_ranges(count, rng)
    nodes = tuple(
        NodeInfo(
            index=index,
            num_cpus=cpus_per_node,
            temp_dir=state_dir / f"n{index}",
            node_manager_port=ports[3 * index],
            object_manager_port=ports[3 * index + 1],
            metrics_export_port=ports[3 * index + 2],
            min_worker_port=ranges[index][0],
            max_worker_port=ranges[index][1],
        )
        for index in range(count)
    )
    return Plan(gcs_port, client_port, nodes, autoscaler_port, dashboard_metrics_port)


def node_args(node: NodeInfo, gcs_port: int, dashboard_port: int, client_port: int) -> list[str]:
    """The ``ray start`` arguments of one node (without the ``ray start`` itself).

    The dashboard (with the Jobs API) binds 127.0.0.1 only: whoever can reach it can run code
    on the cluster, token or not, and a local cluster has no one outside the machine to serve.
    ``--node-ip-address`` is not given: Ray 2.60 replaces a loopback address with the machine's
    own (services.resolve_ip_for_localhost), so the nodes register under that IP anyway, and
    Ray's gRPC servers bind every address whatever is given; the token is what guards those.
    """
    args = [
        f"--num-cpus={node.num_cpus}",
        f"--resources={json.dumps({node.resource: 1})}",
        f"--temp-dir={node.temp_dir}",
        f"--node-manager-port={node.node_manager_port}",
        f"--object-manager-port={node.object_manager_port}",
        f"--metrics-export-port={node.metrics_export_port}",
        f"--min-worker-port={node.min_worker_port}",
        f"--max-worker-port={node.max_worker_port}",
        # 0 = any free port (the agent reports the one it got): the default 52365 would clash
        # between the nodes and with any other Ray on the machine.
        "--dashboard-agent-listen-port=0",
        "--disable-usage-stats",
    ]
    if node.index == 0:
        return [
            "--head",
            f"--port={gcs_port}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard_port}",
            f"--ray-client-server-port={client_port}",
            *args,
        ]
    return [f"--address=127.0.0.1:{gcs_port}", *args]


def client_env(info: ClusterInfo) -> dict[str, str]:
    """The environment a client of the cluster needs (``mmpretrain cluster env`` prints it).

    RAY_ADDRESS is the GCS address, not the dashboard's URL: ``ray.init`` and ``mmpretrain
    train`` read RAY_ADDRESS, and ``ray.init`` takes any address with ``://`` for a Ray Client
    one, which an http URL is not. The Jobs SDK and ``ray job`` read RAY_API_SERVER_ADDRESS
    first and only fall back to RAY_ADDRESS, so the Jobs API gets its own variable. The token
    is passed by its file, so it never appears in a shell's history or a process listing.
    """
    return {
        "RAY_ADDRESS": info.gcs_address,
        "RAY_API_SERVER_ADDRESS": info.dashboard_url,
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(info.token_path),
    }


def export_lines(info: ClusterInfo) -> str:
    """``export K=V`` lines for ``eval "$(mmpretrain cluster env)"``."""
    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in client_env(info).items())


def prometheus_line(info: ClusterInfo) -> str:
    """The command that starts the project's Prometheus on this cluster's nodes, as it is."""
    return f"RAY_SD_FILE={shlex.quote(str(info.sd_file))} cluster/prometheus/run.sh"


# --- what ``status`` prints (the live nodes are passed in) ------------------------------------


def _node_lines(info: ClusterInfo, alive: Iterable[dict[str, Any]]) -> Iterator[str]:
    by_resource = {
        r: node for node in alive for r in node["resources_total"] if r.startswith(RESOURCE_PREFIX)
    }
    for node in info.nodes:
        live = by_resource.get(node.resource)
        role = "head  " if node.index == 0 else "worker"
        if live is None:
            logs = node.temp_dir / "session_latest" / "logs"
            yield f"  node {node.index} {role} NOT ALIVE (logs: {logs})"
            continue
        resources = live["resources_total"]
        yield (
            f"  node {node.index} {role} {live['node_ip']}  CPU {resources.get('CPU', 0):g}  "
            f"{node.resource}={resources.get(node.resource, 0):g}  "
            f"metrics :{node.metrics_export_port}"
        )


def summary(info: ClusterInfo, alive: list[dict[str, Any]], unreachable: str | None = None) -> str:
    """Nodes (``alive``, as the head reported them), the dashboard, and how to use the cluster.

    ``unreachable`` is why the head did not answer, when it did not. Asking the head is
    ``processes.describe``'s part, so that this text can be built and checked without a cluster.
    """
    reached = "" if unreachable is None else f" (the head did not answer: {unreachable})"
    lines = [
        f"cluster in {info.state_dir}: {len(alive)}/{len(info.nodes)} nodes alive{reached}",
        *_node_lines(info, alive),
        f"dashboard and Jobs API: {info.dashboard_url} (token: {info.token_path})",
        f"GCS (ray.init, mmpretrain train --address): {info.gcs_address}",
        "",
        f'use it from a shell: eval "$(mmpretrain cluster env --dir {info.state_dir})", i.e.',
        export_lines(info),
        "",
        "Prometheus on every node's metrics, from the repository root:",
        f"  {prometheus_line(info)}",
        "",
        f"stop it: mmpretrain cluster down --dir {info.state_dir}",
    ]
    return "\n".join(lines)
