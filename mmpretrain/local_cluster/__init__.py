"""A local multi-node Ray cluster on one machine: a head and N worker nodes, token auth on.

Why not one ``ray.init``: it has one node, so a worker group is never spread over nodes, a
node's death cannot be tried, and Prometheus has one endpoint to find. Why not
``ray.cluster_utils.Cluster``: it lives inside one Python process and dies with it, while users
and the job tests need a cluster that outlives the command that started it, that any shell can
use and stop, and whose Jobs API is the same HTTP service a real cluster offers.

Everything about one cluster sits in its state directory::

    cluster.json   what was started: ports, node sessions, pids (never the token)
    auth_token     the token every node and client uses, mode 0600
    n0, n1, ...    each node's own Ray temp dir: session, logs, sockets

so ``down``, ``status`` and ``env`` work from any other process, and two clusters (or this one
and some other Ray on the machine) never share a file, a port or a process.

Three modules, so that what is decided can be read apart from what is done: ``plan`` (nodes,
ports, ``ray start`` arguments, the client environment, the status text; starts nothing),
``state`` (the state directory's files) and ``processes`` (``ray start``, finding and stopping
the cluster's processes by pid, asking the head; ``up``, ``down``, ``status``). This module
names what the CLI and the tests use.
"""

from __future__ import annotations

from mmpretrain.local_cluster.plan import (
    RESOURCE_PREFIX,
    SD_FILE,
    WORKER_PORT_REGION,
    WORKER_PORTS,
    ClusterInfo,
    NodeInfo,
    Plan,
    client_env,
    export_lines,
    node_args,
    plan_nodes,
    prometheus_line,
    summary,
    worker_port_ranges,
)
from mmpretrain.local_cluster.processes import (
    MARKER_ENV,
    START_TIMEOUT_S,
    STOP_GRACE_S,
    describe,
    down,
    live_nodes,
    own_processes,
    status,
    up,
)
from mmpretrain.local_cluster.state import (
    INFO_FILE,
    MAX_TEMP_DIR_CHARS,
    TOKEN_FILE,
    default_state_dir,
    read_info,
    write_token,
)

__all__ = [
    "INFO_FILE",
    "MARKER_ENV",
    "MAX_TEMP_DIR_CHARS",
    "RESOURCE_PREFIX",
    "SD_FILE",
    "START_TIMEOUT_S",
    "STOP_GRACE_S",
    "TOKEN_FILE",
    "WORKER_PORTS",
    "WORKER_PORT_REGION",
    "ClusterInfo",
    "NodeInfo",
    "Plan",
    "client_env",
    "default_state_dir",
    "describe",
    "down",
    "export_lines",
    "live_nodes",
    "node_args",
    "own_processes",
    "plan_nodes",
    "prometheus_line",
    "read_info",
    "status",
    "summary",
    "up",
    "worker_port_ranges",
    "write_token",
]
