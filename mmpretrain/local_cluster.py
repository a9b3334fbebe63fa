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
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import random
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmpretrain.errors import ClusterError
from mmpretrain.ports import free_ports, port_in_use

INFO_FILE = "cluster.json"
TOKEN_FILE = "auth_token"
# Every process a node starts carries this in its environment (Ray passes its environment down
# to workers and job drivers), so `down` finds the ones that left the node's session.
MARKER_ENV = "MMPRETRAIN_CLUSTER_DIR"
RESOURCE_PREFIX = "mmpretrain_node_"
SD_FILE = "prom_metrics_service_discovery.json"

# Worker processes each hold one port. Ranges sit between Ray's default worker range
# (10002-19999, which another Ray on the machine may be using) and the kernel's ephemeral range
# (32768+, where every port picked by "bind to 0" lands), so neither can collide with them.
WORKER_PORTS = 256
WORKER_PORT_REGION = (20000, 32768)

# Ray puts its Unix sockets at TEMP/session_<date>_<time>_<us>_<pid>/sockets/plasma_store(.N),
# and AF_UNIX paths stop at 107 bytes (Ray checks and fails). The session part takes up to 66.
MAX_TEMP_DIR_CHARS = 107 - len("/session_2026-01-01_00-00-00_000000_4194304/sockets/plasma_store.9")

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0


def default_state_dir() -> Path:
    """``/tmp/mmpretrain-cluster-USER``: one cluster per user and machine by default.

    Under /tmp rather than the current folder because any shell, from any folder, must find the
    cluster to use or stop it, and because Ray's socket paths under it must stay short (see
    ``MAX_TEMP_DIR_CHARS``); per user because a folder with someone else's token in it is no
    place to start one's own cluster.
    """
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Path(tempfile.gettempdir()) / f"mmpretrain-cluster-{user}"


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


# --- planning: ports and arguments (no Ray, no processes) -------------------------------------


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


# --- state files -------------------------------------------------------------------------------


def write_token(path: Path) -> Path:
    """A fresh random token in a file created with mode 0600.

    Created 0600 rather than chmod-ed after: between a create and a chmod, anyone on the machine
    could open the file and keep reading it. Ray's own ``ray start`` would write a token to
    ~/.ray/auth_token, world-readable and shared by every cluster of the user; this one is the
    cluster's own, next to its record.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


def _write_info(info: ClusterInfo) -> None:
    """Written after every node start, atomically, so a crash of ``up`` leaves what to stop."""
    tmp = info.state_dir / f".{INFO_FILE}.tmp"
    tmp.write_text(json.dumps(info.to_json(), indent=2))
    os.replace(tmp, info.state_dir / INFO_FILE)


def _forget(state_dir: Path) -> None:
    """Removes the record and the token of a stopped cluster; its logs stay."""
    for name in (INFO_FILE, TOKEN_FILE):
        (state_dir / name).unlink(missing_ok=True)


def read_info(state_dir: Path | str) -> ClusterInfo:
    """The cluster recorded in ``state_dir``; a ClusterError naming ``up`` when there is none."""
    state_dir = Path(state_dir).expanduser().resolve()
    path = state_dir / INFO_FILE
    if not path.is_file():
        raise ClusterError(
            f"no cluster in {state_dir}: start one with `mmpretrain cluster up --dir {state_dir}`"
        )
    return ClusterInfo.from_json(json.loads(path.read_text()))


# --- processes ---------------------------------------------------------------------------------


def _psutil():
    import psutil  # a Ray dependency; imported here so the module loads without it

    return psutil


def _mentions_cluster(cmdline: list[str], node_dirs: tuple[str, ...], gcs_port: int) -> bool:
    """An option of a Ray process that names one of the node dirs or the cluster's GCS.

    Only ``--option=value`` arguments count: a user's ``tail -f DIR/n0/...`` names a node dir
    too, and is nobody's to stop.
    """
    for arg in cmdline:
        if not arg.startswith("--") or "=" not in arg:
            continue
        value = arg.split("=", 1)[1]
        if any(value.startswith(d) for d in node_dirs) or value.endswith(f":{gcs_port}"):
            return True
    return False


def own_processes(info: ClusterInfo | None, state_dir: Path) -> list[Any]:
    """Every live process of this cluster, and of no other, as psutil.Process objects.

    Found four ways, because no single one sees them all: a node's daemons share the session
    its ``ray start`` led (Ray's agents and workers rename themselves with setproctitle, which
    also blanks what /proc shows of their command line and environment, but not their session);
    job drivers leave the session (Ray starts them with start_new_session) but keep the
    environment marker; options naming a node dir or the GCS port catch the rest; and the
    children of all of these are taken too. The calling process and its ancestors are never
    included (a shell that did ``eval "$(mmpretrain cluster env)"`` is a client, not a node).
    """
    psutil = _psutil()
    me = psutil.Process()
    spared = {me.pid, *(parent.pid for parent in me.parents())}
    sessions = {node.session for node in info.nodes if node.session} if info else set()
    since = info.started_at - 1 if info else 0.0
    node_dirs = tuple(f"{node.temp_dir}{os.sep}" for node in info.nodes) if info else ()
    marker = str(state_dir)
    found: dict[int, Any] = {}
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        if proc.pid in spared:
            continue
        try:
            cmdline = proc.info["cmdline"] or []
            if (
                (os.getsid(proc.pid) in sessions and proc.info["create_time"] >= since)
                or (info and _mentions_cluster(cmdline, node_dirs, info.gcs_port))
                or proc.environ().get(MARKER_ENV) == marker
            ):
                found[proc.pid] = proc
        except (psutil.Error, OSError):
            continue  # gone, or someone else's
    for proc in list(found.values()):
        with contextlib.suppress(psutil.Error):
            for child in proc.children(recursive=True):
                if child.pid not in spared:
                    found.setdefault(child.pid, child)
    return list(found.values())


def _session_pids(session: int) -> tuple[int, ...]:
    psutil = _psutil()
    pids = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getsid(proc.pid) == session:
                pids.append(proc.pid)
    return tuple(sorted(pids))


def _terminate(procs: list[Any], grace: float) -> None:
    """SIGTERM, then SIGKILL whatever is still there after ``grace`` seconds.

    psutil refuses to signal a pid that now belongs to another process (it checks the start
    time), so a pid recycled since the scan is left alone. Ray's agents whose raylet is gone
    ignore SIGTERM; the SIGKILL is for them.
    """
    psutil = _psutil()
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=5)


def _stop(info: ClusterInfo | None, state_dir: Path, grace: float) -> int:
    """Stops the cluster's processes until a scan finds none (a dying raylet may start more)."""
    stopped = 0
    for _ in range(4):
        procs = own_processes(info, state_dir)
        if not procs:
            break
        _terminate(procs, grace)
        stopped += len(procs)
    return stopped


# --- the three commands ------------------------------------------------------------------------


def _ray_cli() -> str:
    """The ``ray`` next to this interpreter, so the nodes run the Ray this package imports."""
    beside = Path(sys.executable).parent / "ray"
    found = str(beside) if beside.exists() else shutil.which("ray")
    if not found:
        raise ClusterError(f"no `ray` command next to {sys.executable} or on PATH")
    return found


def _node_env(info: ClusterInfo) -> dict[str, str]:
    """The nodes' environment: token auth on with the cluster's own token file.

    RAY_AUTH_TOKEN is dropped because Ray reads it before RAY_AUTH_TOKEN_PATH, and
    RAY_API_SERVER_ADDRESS because it may name another cluster. RAY_ADDRESS is set to this
    cluster's GCS: Ray's own actors look their cluster up with address "auto" when it is unset
    (Ray Train's PlacementGroupCleaner does, through the state API), which fails with "Found
    multiple active Ray instances" as soon as any other Ray runs on the machine. ``ray start``
    itself does not read RAY_ADDRESS. The head's autoscaler and dashboard metrics ports have no
    ``ray start`` flag, only these variables. This interpreter's folder goes first on PATH: a
    job's entrypoint is an ``mmpretrain ...`` command line, run by the nodes' shell, which must
    find this installation's command even when its virtual environment is not activated.
    """
    drop = {"RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        RAY_ADDRESS=info.gcs_address,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(info.token_path),
        AUTOSCALER_METRIC_PORT=str(info.autoscaler_metrics_port),
        DASHBOARD_METRIC_PORT=str(info.dashboard_metrics_port),
        **{MARKER_ENV: str(info.state_dir)},
    )
    return env


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _log_tail(node: NodeInfo) -> str:
    """The last lines of the node's own logs that say something, for an error message."""
    logs = node.temp_dir / "session_latest" / "logs"
    parts = []
    for name in ("gcs_server.err", "raylet.err", "dashboard.err", "gcs_server.out", "raylet.out"):
        path = logs / name
        if path.is_file() and path.stat().st_size and len(parts) < 2:
            parts.append(f"--- {path}\n{_tail(path.read_text(errors='replace'), 10)}")
    return "\n".join(parts)


def _start_node(node: NodeInfo, args: list[str], env: dict[str, str]) -> int:
    """Runs ``ray start`` for one node in a new session and returns that session's id.

    The new session gives the node's daemons an identity of their own (they inherit it), which
    ``down`` stops without touching anything else; it also keeps a Ctrl-C in the user's shell
    from reaching them.
    """
    node.temp_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [_ray_cli(), "start", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
        output += f"\n(ray start did not finish in {START_TIMEOUT_S:g} s)"
    if proc.returncode != 0:
        raise _NodeFailedError(node, proc.pid, output)
    return proc.pid


class _NodeFailedError(Exception):
    def __init__(self, node: NodeInfo, session: int, output: str) -> None:
        super().__init__(node.index)
        self.node, self.session, self.output = node, session, output


def _get(url: str, token: str | None, timeout: float = 5.0) -> tuple[int, bytes]:
    """HTTP GET; (status, body), with the status of an HTTP error instead of an exception."""
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def live_nodes(info: ClusterInfo, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The alive nodes as the head's state API reports them (with the token)."""
    token = info.token_path.read_text().strip()
    status, body = _get(f"{info.dashboard_url}/api/v0/nodes?detail=1", token, timeout)
    if status != 200:
        raise ClusterError(f"the dashboard answered {status}: {body[:200]!r}")
    nodes = json.loads(body)["data"]["result"]["result"]
    return [node for node in nodes if node["state"] == "ALIVE"]


def _wait_alive(info: ClusterInfo, deadline: float) -> None:
    """Until every node is alive in the GCS and the dashboard (Jobs API) answers."""
    want = {node.resource for node in info.nodes}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError, KeyError, ClusterError):
            seen = {r for node in live_nodes(info) for r in node["resources_total"] if r in want}
            if seen == want:
                return
        time.sleep(0.5)
    raise ClusterError(
        f"nodes {sorted(want - seen)} did not come up in time; logs under {info.state_dir}/n*"
    )


def up(
    state_dir: Path | str,
    workers: int = 1,
    cpus_per_node: int = 4,
    head_port: int | None = None,
    dashboard_port: int = 8265,
) -> ClusterInfo:
    """Starts a head and ``workers`` worker nodes on this machine, token auth on; returns them.

    Each node is a ``ray start`` of its own with its own ports, temp dir, logical CPUs and a
    custom resource ``mmpretrain_node_<i>`` (0 = head) to place work on a given node. Returns
    once every node is alive and the Jobs API answers. A node that fails to start stops what was
    started and raises a ClusterError with the end of Ray's output and logs.
    """
    state_dir = Path(state_dir).expanduser().resolve()
    if workers < 0 or cpus_per_node < 1:
        raise ClusterError(
            f"workers={workers}, cpus_per_node={cpus_per_node}: need workers >= 0 and "
            "cpus_per_node >= 1"
        )
    longest = len(str(state_dir / f"n{workers}"))
    if longest > MAX_TEMP_DIR_CHARS:
        raise ClusterError(
            f"{state_dir} is too long for Ray's socket paths under it (node dirs must stay "
            f"within {MAX_TEMP_DIR_CHARS} characters, this gives {longest}): use a shorter --dir"
        )
    if (state_dir / INFO_FILE).is_file():
        if own_processes(read_info(state_dir), state_dir):
            raise ClusterError(
                f"a cluster is already running from {state_dir}; stop it first with "
                f"`mmpretrain cluster down --dir {state_dir}`"
            )
        (state_dir / INFO_FILE).unlink()  # left by a cluster that is gone (a reboot, a kill)
    if head_port is not None and head_port == dashboard_port:
        raise ClusterError(f"head port and dashboard port are both {head_port}; pick two")
    for port, what in ((dashboard_port, "--dashboard-port"), (head_port, "head port")):
        if port is not None and port_in_use(port):
            raise ClusterError(f"port {port} ({what}) is already in use; pick another")

    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    token_path = state_dir / TOKEN_FILE
    token_path.unlink(missing_ok=True)
    write_token(token_path)
    plan = plan_nodes(state_dir, workers, cpus_per_node, head_port, dashboard_port)
    gcs_port, client_port = plan.gcs_port, plan.client_server_port
    info = ClusterInfo(
        state_dir,
        token_path,
        gcs_port,
        dashboard_port,
        client_port,
        (),
        time.time(),
        plan.autoscaler_metrics_port,
        plan.dashboard_metrics_port,
    )
    env = _node_env(info)
    started: list[NodeInfo] = []
    try:
        for node in plan.nodes:
            session = _start_node(node, node_args(node, gcs_port, dashboard_port, client_port), env)
            started.append(NodeInfo(**{**node.__dict__, "session": session}))
            info = ClusterInfo(**{**info.__dict__, "nodes": tuple(started)})
            _write_info(info)
        _wait_alive(info, time.monotonic() + START_TIMEOUT_S)
    except _NodeFailedError as failed:
        tried = NodeInfo(**{**failed.node.__dict__, "session": failed.session})
        info = ClusterInfo(**{**info.__dict__, "nodes": (*started, tried)})
        _stop(info, state_dir, STOP_GRACE_S)
        _forget(state_dir)
        raise ClusterError(
            f"node {failed.node.index} did not start; stopped what had started. "
            f"ray start said:\n{_tail(failed.output, 15)}\n{_log_tail(failed.node)}".rstrip()
        ) from None
    except BaseException:
        _stop(info, state_dir, STOP_GRACE_S)
        _forget(state_dir)
        raise
    nodes = tuple(
        NodeInfo(**{**node.__dict__, "pids": _session_pids(node.session)}) for node in started
    )
    info = ClusterInfo(**{**info.__dict__, "nodes": nodes})
    _write_info(info)
    return info


def down(state_dir: Path | str, grace: float = STOP_GRACE_S) -> str:
    """Stops exactly this cluster's processes and forgets it; says what it did.

    Never ``ray stop``: that kills every Ray process of the user on the machine, another
    cluster's, a colleague's tests' and an embedded ``mmpretrain train`` run's alike. Processes
    are found as ``own_processes`` describes and get SIGTERM, then SIGKILL after ``grace``
    seconds. Logs stay in the node dirs; a second ``down`` finds nothing to stop.
    """
    state_dir = Path(state_dir).expanduser().resolve()
    info = read_info(state_dir) if (state_dir / INFO_FILE).is_file() else None
    stopped = _stop(info, state_dir, grace)
    _forget(state_dir)
    if not stopped and info is None:
        return f"nothing to stop: no cluster in {state_dir}"
    if not stopped:
        return f"nothing to stop: the cluster in {state_dir} had already stopped (record removed)"
    return f"stopped the cluster in {state_dir} ({stopped} processes); logs stay in {state_dir}/n*"


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


def describe(info: ClusterInfo) -> str:
    """Nodes (live, from the head), where the dashboard is, and how to use the cluster."""
    try:
        alive = live_nodes(info)
        reached = ""
    except (OSError, ValueError, ClusterError) as exc:
        alive, reached = [], f" (the head did not answer: {exc})"
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


def status(state_dir: Path | str) -> str:
    """What ``describe`` says, or why there is nothing to describe."""
    state_dir = Path(state_dir).expanduser().resolve()
    info = read_info(state_dir)
    if not own_processes(info, state_dir):
        return (
            f"the cluster recorded in {state_dir} is not running (no process left); "
            f"`mmpretrain cluster down --dir {state_dir}` forgets it"
        )
    return describe(info)
