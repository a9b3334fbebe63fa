"""Training survives what multi-day runs meet: a killed worker, a killed driver.

Real processes and real signals: SIGKILL to a Ray Train worker process in the middle of a run,
and to the `mmpretrain train` driver process; no exception is injected from inside.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mmpretrain.config import load_config
from mmpretrain.train.checkpoint.manifest import check_checkpoint
from mmpretrain.train.launch import run_training

pytestmark = pytest.mark.integration

MAX_STEPS, CHECKPOINT_EVERY = 12, 4


def steps_logged(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def wait_for(condition, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.2)


def live_train_worker_pids() -> list[int]:
    """PIDs of the Ray Train workers of this process's own local Ray (its raylet is our child,
    the workers are the raylet's): never another cluster's on the same machine."""
    pids = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "RayTrainWorker" in " ".join(process.cmdline()):
                pids.append(process.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


def ray_process_ids() -> set[int]:
    """Every Ray process on the machine: actors and workers, raylets, GCS servers."""
    found = set()
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if cmdline.startswith("ray::") or "raylet" in cmdline or "gcs_server" in cmdline:
            found.add(process.pid)
    return found


def assert_continuous_after_restart(steps: list[int]) -> int:
    """The log restarts once, right after a checkpoint, and then counts on to MAX_STEPS."""
    restarts = [i for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(restarts) == 1, steps
    resumed_at = steps[restarts[0]] - 1
    assert resumed_at % CHECKPOINT_EVERY == 0 and resumed_at > 0, steps
    assert steps[restarts[0] :] == list(range(resumed_at + 1, MAX_STEPS + 1)), steps
    assert set(range(1, MAX_STEPS + 1)) <= set(steps)
    return resumed_at


def short_run(synth_data: dict[str, Path], *extra: str) -> list[str]:
    """Overrides of the runs these tests kill: 12 small steps, a checkpoint every 4."""
    return [
        f"data.train={synth_data['train']}",
        f"data.tokenizer={synth_data['tokenizer']}",
        "data.batch_size=8",
        f"train.max_steps={MAX_STEPS}",
        f"checkpoint.every={CHECKPOINT_EVERY}",
        "train.log_every=1",
        "optim.warmup_steps=2",
        *extra,
    ]


def test_a_killed_worker_restarts_the_group_from_the_last_complete_checkpoint(
    local_ray, synth_data, tmp_path
) -> None:
    cfg = load_config(
        "tiny",
        short_run(
            synth_data,
            "train.max_failures=1",
            f"train.storage_path={tmp_path}",
            "train.run_name=killed-worker",
            "train.cpus_per_worker=1",
        ),
    )
    run_dir = cfg.run_dir
    killed: list[int] = []
    errors: list[BaseException] = []

    def kill_a_worker_between_checkpoints() -> None:
        try:
            wait_for(lambda: any(step > CHECKPOINT_EVERY for step in steps_logged(run_dir)))
            victim = live_train_worker_pids()[-1]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
        except BaseException as exc:  # reported by the main thread's assertion
            errors.append(exc)

    killer = threading.Thread(target=kill_a_worker_between_checkpoints, daemon=True)
    killer.start()
    result = run_training(cfg)
    killer.join(timeout=5)

    assert killed and not errors, errors
    resumed_at = assert_continuous_after_restart(steps_logged(run_dir))
    assert resumed_at >= CHECKPOINT_EVERY
    assert result.checkpoint is not None and result.checkpoint.endswith(f"{MAX_STEPS:08d}")
    assert check_checkpoint(Path(result.checkpoint)).complete


@pytest.mark.slow
def test_a_killed_driver_is_resumed_by_running_the_same_command(synth_data, tmp_path) -> None:
    command = [
        sys.executable, "-m", "mmpretrain", "train", "--config", "tiny",
        *short_run(synth_data, "train.storage_path=.", "train.run_name=killed-driver"),
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    run_dir = tmp_path / "killed-driver"
    before = ray_process_ids()  # other tests' Ray may be running; only the driver's must go
    with (tmp_path / "first.log").open("w") as log:
        driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
        first = run_dir / f"checkpoint_step_{CHECKPOINT_EVERY:08d}"
        try:
            wait_for(lambda: first.is_dir() and check_checkpoint(first).complete)
            wait_for(lambda: any(step > CHECKPOINT_EVERY for step in steps_logged(run_dir)))
        finally:
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=60)
    # The driver's local Ray goes down with it; nothing may keep training into the run.
    wait_for(lambda: not (ray_process_ids() - before), timeout=120)

    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "resumed from" in proc.stdout + proc.stderr
    # The kill may land just after a checkpoint and before the next step is logged, so the
    # log need not repeat a step: the resume point is what the rerun says it resumed from.
    found = re.search(r"resumed from \S+ at step (\d+)", proc.stdout + proc.stderr)
    assert found, proc.stdout[-3000:]
    resumed_at = int(found.group(1))
    assert resumed_at % CHECKPOINT_EVERY == 0 and resumed_at >= CHECKPOINT_EVERY, resumed_at
    steps = steps_logged(run_dir)
    rerun = len(steps) - (MAX_STEPS - resumed_at)
    assert steps[rerun:] == list(range(resumed_at + 1, MAX_STEPS + 1)), steps
    assert set(range(1, MAX_STEPS + 1)) <= set(steps), steps


@pytest.mark.slow
def test_a_lost_node_shrinks_the_run_to_the_workers_that_still_fit(synth_data, tmp_path) -> None:
    """Two 2-CPU nodes hold one worker each (train.cpus_per_worker=2); the head's one CPU
    runs Ray Data. One node goes mid-run: the group comes back with one worker
    (train.num_workers=[1, 2]), resumes from the last complete checkpoint with its ZeRO
    shards converted to the new world size, and finishes."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        doomed = cluster.add_node(num_cpus=2)
        cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        command = [
            sys.executable, "-m", "mmpretrain", "train", "--config", "tiny",
            *short_run(
                synth_data,
                "train.storage_path=.",
                "train.run_name=lost-node",
                "train.num_workers=[1,2]",
                "train.cpus_per_worker=2",
                "train.max_failures=1",
                "train.start_timeout_s=20",  # a start sized before the node loss is seen
                f"cluster.address={cluster.address}",
            ),
        ]  # fmt: skip
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        run_dir = tmp_path / "lost-node"
        with (tmp_path / "driver.log").open("w") as log:
            driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=log)
            try:
                first = run_dir / f"checkpoint_step_{CHECKPOINT_EVERY:08d}"
                wait_for(lambda: first.is_dir() and check_checkpoint(first).complete)
                wait_for(lambda: any(step > CHECKPOINT_EVERY for step in steps_logged(run_dir)))
                cluster.remove_node(doomed)
                returncode = driver.wait(timeout=900)
            finally:
                driver.kill()
        output = (tmp_path / "driver.log").read_text()
        assert returncode == 0, output[-4000:]
        assert_continuous_after_restart(steps_logged(run_dir))
        assert "ZeRO shards converted to this world size" in output
        final = check_checkpoint(run_dir / f"checkpoint_step_{MAX_STEPS:08d}")
        assert final.complete and final.manifest["world_size"] == 1, final
    finally:
        cluster.shutdown()
