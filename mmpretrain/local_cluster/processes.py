"""The cluster's processes: starting its nodes, finding them again by pid, stopping them.

Everything that touches the machine beyond a port probe sits here: ``ray start`` subprocesses,
psutil scans, signals and HTTP calls to the head. ``up``, ``down`` and ``status`` are the
commands; they read what to start from ``plan`` and what was started from ``state``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from mmpretrain.errors import ClusterError
from mmpretrain.local_cluster.plan import ClusterInfo, NodeInfo, node_args, plan_nodes, summary
from mmpretrain.local_cluster.state import (
    INFO_FILE,
    MAX_TEMP_DIR_CHARS,
    TOKEN_FILE,
    forget,
    read_info,
    write_info,
    write_token,
)
from mmpretrain.ports import port_in_use

# Every process a node starts carries this in its environment (Ray passes its environment down
# to workers and job drivers), so `down` finds the ones that left the node's session.
MARKER_ENV = "MMPRETRAIN_CLUSTER_DIR"

START_TIMEOUT_S = 120.0
STOP_GRACE_S = 5.0


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
            write_info(info)
        _wait_alive(info, time.monotonic() + START_TIMEOUT_S)
    except _NodeFailedError as failed:
        tried = NodeInfo(**{**failed.node.__dict__, "session": failed.session})
        info = ClusterInfo(**{**info.__dict__, "nodes": (*started, tried)})
        _stop(info, state_dir, STOP_GRACE_S)
        forget(state_dir)
        raise ClusterError(
            f"node {failed.node.index} did not start; stopped what had started. "
            f"ray start said:\n{_tail(failed.output, 15)}\n{_log_tail(failed.node)}".rstrip()
        ) from None
    except BaseException:
        _stop(info, state_dir, STOP_GRACE_S)
        forget(state_dir)
        raise
    nodes = tuple(
        NodeInfo(**{**node.__dict__, "pids": _session_pids(node.session)}) for node in started
    )
    info = ClusterInfo(**{**info.__dict__, "nodes": nodes})
    write_info(info)
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
    forget(state_dir)
    if not stopped and info is None:
        return f"nothing to stop: no cluster in {state_dir}"
    if not stopped:
        return f"nothing to stop: the cluster in {state_dir} had already stopped (record removed)"
    return f"stopped the cluster in {state_dir} ({stopped} processes); logs stay in {state_dir}/n*"


def describe(info: ClusterInfo) -> str:
    """Nodes (live, from the head), where the dashboard is, and how to use the cluster."""
    try:
        alive = live_nodes(info)
    except (OSError, ValueError, ClusterError) as exc:
        return summary(info, [], unreachable=str(exc))
    return summary(info, alive)


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
