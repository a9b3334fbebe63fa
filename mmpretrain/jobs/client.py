"""``mmpretrain job``: submit, follow, stop and resubmit jobs through Ray's Jobs API.

A thin layer over ``JobSubmissionClient``. What it adds is what a team running pretraining on
a shared cluster needs: specs checked before anything is sent, the cluster it talks to said
out loud, a stop that waits for the run's checkpoint and says at which step it stopped, a
resubmit that sends the same spec and overrides again (and so resumes the run, whose
directory decides where it continues), and clear words instead of tracebacks when the token is
missing or wrong. The token itself is never printed, logged or stored with a job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from mmpretrain.errors import JobError
from mmpretrain.jobs.spec import (
    METADATA_PREFIX,
    SUPERVISOR_MARGIN_S,
    JobSpec,
    ParseCommand,
    load_job_spec,
)
from mmpretrain.train.stop import HARD_STOP_STEP, STOPPED_AT

# How a job ended, as `mmpretrain job submit/logs --follow` exits: scripts can branch on it.
EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.FAILED: 1, JobStatus.STOPPED: 3}
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")  # in Ray's order of precedence
TOKEN_HELP = (
    "export RAY_AUTH_MODE=token and the cluster's token: RAY_AUTH_TOKEN_PATH=<token file> "
    "(or RAY_AUTH_TOKEN, or ~/.ray/auth_token); for `mmpretrain cluster up` clusters, "
    'eval "$(mmpretrain cluster env)" sets both'
)
POLL_S = 1.0
Print = Callable[[str], None]


@dataclass(frozen=True)
class Cluster:
    client: JobSubmissionClient
    url: str
    source: str  # where the address came from, as the user would look for it


@contextlib.contextmanager
def _address_wins(address: str) -> Iterator[None]:
    """Ray's client takes RAY_API_SERVER_ADDRESS, then RAY_ADDRESS, over its argument; an
    --address typed on the command line must win over both."""
    saved = {name: os.environ.get(name) for name in ADDRESS_VARIABLES}
    os.environ["RAY_API_SERVER_ADDRESS"] = address
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def connect(address: str | None) -> Cluster:
    """A client of the cluster at ``address``, else the one the environment names (as Ray
    reads it), else a Ray running on this machine."""
    source = "--address"
    if address is None:
        source = next(
            (name for name in ADDRESS_VARIABLES if os.environ.get(name)),
            "the Ray running on this machine",
        )
    where = address or os.environ.get(source, "this machine")
    # Ray's client logs each upload and every file it leaves out of one; keep the console ours.
    # Several of its modules set their own logger's level, so each is lowered by name.
    for name in [*logging.root.manager.loggerDict, "ray"]:
        if name == "ray" or name.startswith("ray."):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with _address_wins(address) if address else contextlib.nullcontext():
            client = JobSubmissionClient()
    except AuthenticationError as exc:
        refused = "403" in str(exc).split("\n", 1)[0] or "failed" in str(exc).split(":")[0]
        why = "refused the token (HTTP 403)" if refused else "asks for a token (HTTP 401)"
        raise JobError(f"the Ray Jobs API at {where} {why}: {TOKEN_HELP}") from None
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise JobError(
            f"no Ray Jobs API at {where} (from {source}): {str(exc).rstrip('.')}. Is the "
            "cluster up (`mmpretrain cluster status`)? Give its dashboard URL with --address "
            "http://HOST:8265 or RAY_ADDRESS"
        ) from None
    return Cluster(client=client, url=getattr(client, "_address", where), source=source)


def _call(action: Callable[[], object], job_id: str | None = None) -> object:
    """One Jobs API request, with a missing job and a refused token said plainly."""
    try:
        return action()
    except AuthenticationError:
        raise JobError(f"the Ray Jobs API refused the request: {TOKEN_HELP}") from None
    except RuntimeError as exc:
        if job_id is not None and ("does not exist" in str(exc) or "404" in str(exc)):
            raise JobError(f"no job {job_id!r} on this cluster (`mmpretrain job list`)") from None
        raise JobError(str(exc)) from None


def submit(
    cluster: Cluster,
    spec: JobSpec,
    submission_id: str | None = None,
    wait: bool = True,
    out: Print = print,
) -> int:
    """Sends the job; with ``wait``, follows its logs to the end and returns its exit code."""
    resources = spec.resources
    try:
        job_id = cluster.client.submit_job(
            entrypoint=spec.command_line(),
            runtime_env=spec.runtime_env(),
            metadata=spec.job_metadata(),
            submission_id=submission_id,
            entrypoint_num_cpus=resources.get("num_cpus"),
            entrypoint_num_gpus=resources.get("num_gpus"),
            entrypoint_memory=resources.get("memory"),
            entrypoint_resources=resources.get("resources"),
        )
    except AuthenticationError:
        raise JobError(f"the Ray Jobs API refused the submission: {TOKEN_HELP}") from None
    except RuntimeError as exc:
        if submission_id and "already exists" in str(exc):
            raise JobError(
                f"submission id {submission_id!r} belongs to an earlier job (ids are never "
                "reused); pick another, or `mmpretrain job resubmit` that one"
            ) from None
        raise JobError(f"the cluster refused the job: {exc}") from None
    out(f"submitted {job_id}: {spec.command_line()}")
    if not wait:
        out(f"follow: mmpretrain job logs {job_id} --follow\nstop:   mmpretrain job stop {job_id}")
        return 0
    return follow(cluster, job_id, out)


def follow(cluster: Cluster, job_id: str, out: Print = print) -> int:
    """Prints the job's output as it comes, then how it ended; Ctrl-C leaves the job running."""

    async def tail() -> None:
        async for chunk in cluster.client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        _call(lambda: asyncio.run(tail()), job_id)
    except KeyboardInterrupt:
        out(
            f"\nno longer following; {job_id} goes on. Follow: mmpretrain job logs {job_id} "
            f"--follow; stop: mmpretrain job stop {job_id}"
        )
        return 130
    status = _wait_for_end(cluster, job_id, timeout_s=60)
    out(f"job {job_id} {status.value}{_stopped_where(cluster, job_id, status)}")
    return EXIT_CODES.get(status, 1)


def logs(cluster: Cluster, job_id: str, follow_logs: bool, out: Print = print) -> int:
    if follow_logs:
        return follow(cluster, job_id, out)
    sys.stdout.write(str(_call(lambda: cluster.client.get_job_logs(job_id), job_id)))
    return 0


def status(cluster: Cluster, job_id: str, out: Print = print) -> int:
    info = _call(lambda: cluster.client.get_job_info(job_id), job_id)
    metadata = info.metadata or {}
    lines = [
        f"job:        {job_id} ({metadata.get(f'{METADATA_PREFIX}name', '-')})",
        f"status:     {info.status.value}{_stopped_where(cluster, job_id, info.status)}",
        f"entrypoint: {info.entrypoint}",
        f"started:    {_when(info.start_time)}",
        f"ended:      {_when(info.end_time)}",
    ]
    if info.message:
        lines.append(f"message:    {info.message.strip().splitlines()[-1]}")
    out("\n".join(lines))
    return 0


def stop(cluster: Cluster, job_id: str, out: Print = print) -> int:
    """Asks the job to stop (SIGTERM to its driver), then waits while the run finishes its
    step and writes its checkpoint, and says at which step it stopped."""
    info = _call(lambda: cluster.client.get_job_info(job_id), job_id)
    if info.status.is_terminal():
        out(f"job {job_id} had already ended: {info.status.value}")
        return EXIT_CODES.get(info.status, 1)
    grace = float((info.metadata or {}).get(f"{METADATA_PREFIX}stop_grace_s", 0))
    out(f"stopping {job_id}: waiting up to {grace + SUPERVISOR_MARGIN_S:g}s for its checkpoint")
    _call(lambda: cluster.client.stop_job(job_id), job_id)
    ended = _wait_for_end(cluster, job_id, timeout_s=grace + 2 * SUPERVISOR_MARGIN_S)
    out(f"job {job_id} {ended.value}{_stopped_where(cluster, job_id, ended)}")
    if ended == JobStatus.STOPPED:
        out(f"resume it: mmpretrain job resubmit {job_id}")
    return EXIT_CODES.get(ended, 1)


def list_jobs(cluster: Cluster, out: Print = print) -> int:
    jobs = _call(cluster.client.list_jobs)
    rows = [
        (
            job.submission_id or job.job_id or "-",
            job.status.value,
            (job.metadata or {}).get(f"{METADATA_PREFIX}name", "-"),
            _when(job.start_time),
            job.entrypoint,
        )
        for job in sorted(jobs, key=lambda job: job.start_time or 0)
    ]
    if not rows:
        out(f"no jobs on {cluster.url}")
        return 0
    out(f"{'submission id':<30}{'status':<11}{'name':<18}{'started':<21}entrypoint")
    for job_id, state, name, started, entrypoint in rows:
        short = entrypoint if len(entrypoint) <= 60 else entrypoint[:57] + "..."
        out(f"{job_id:<30}{state:<11}{name:<18}{started:<21}{short}")
    return 0


def resubmit(
    cluster: Cluster,
    job_id: str,
    parse: ParseCommand,
    submission_id: str | None = None,
    wait: bool = True,
    out: Print = print,
) -> int:
    """The same spec (the copy kept with the job) and overrides under a new id: the run picks
    up from its newest complete checkpoint, since its directory is the same."""
    info = _call(lambda: cluster.client.get_job_info(job_id), job_id)
    metadata = info.metadata or {}
    if f"{METADATA_PREFIX}spec_yaml" not in metadata:
        raise JobError(f"job {job_id} was not submitted by `mmpretrain job submit`")
    if not info.status.is_terminal():
        raise JobError(
            f"job {job_id} is {info.status.value}; two jobs would train the same run. Stop it "
            f"first: mmpretrain job stop {job_id}"
        )
    spec = load_job_spec(
        metadata[f"{METADATA_PREFIX}spec"],
        shlex.split(metadata.get(f"{METADATA_PREFIX}overrides", "")),
        parse,
        text=metadata[f"{METADATA_PREFIX}spec_yaml"],
    )
    out(f"resubmitting {job_id} ({spec.path.name})")
    return submit(cluster, spec, submission_id=submission_id, wait=wait, out=out)


def _wait_for_end(cluster: Cluster, job_id: str, timeout_s: float) -> JobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        state = _call(lambda: cluster.client.get_job_status(job_id), job_id)
        if state.is_terminal() or time.monotonic() > deadline:
            return state
        time.sleep(POLL_S)


def stopped_step(log_text: str) -> tuple[int | None, bool]:
    """(step, whole) from a run's own last words: the stop checkpoint's step and True, or the
    newest complete checkpoint's step and False when the stop could not write its own."""
    for pattern, whole in ((STOPPED_AT, True), (HARD_STOP_STEP, False)):
        found = re.findall(pattern, log_text)
        if found:
            return int(found[-1]), whole
    return None, False


def _stopped_where(cluster: Cluster, job_id: str, state: JobStatus) -> str:
    if state != JobStatus.STOPPED:
        return ""
    step, whole = stopped_step(str(_call(lambda: cluster.client.get_job_logs(job_id), job_id)))
    if step is None:
        return " (no checkpoint step in its log)"
    if whole:
        return f" at step {step}, with a complete checkpoint"
    return f" without its stop checkpoint; the newest complete one is at step {step}"


def _when(milliseconds: int | None) -> str:
    if not milliseconds:
        return "-"
    return datetime.fromtimestamp(milliseconds / 1000).strftime("%Y-%m-%d %H:%M:%S")
