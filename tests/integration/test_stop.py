"""SIGTERM to `mmpretrain train` (what `ray job stop`, a pod deletion and a spot preemption
send): the run finishes its step, writes one complete checkpoint and exits saying the step;
the same command resumes there with the exact data position. A second SIGTERM ends it at once,
and the newest complete checkpoint stays the one before.

Real processes, as a user's shell runs them: `python -m mmpretrain train` with an embedded Ray,
signalled as `kill PID` does. (Not its process group: the embedded Ray's own processes share
it and end on SIGTERM; Ray blocks only SIGINT in them, so a terminal's Ctrl-C is safe.) One
epoch of 256 samples: 2 workers of batch 8 take 16 steps.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.train.checkpoint.manifest import list_checkpoints

# Slow tier: the job stop test (test_jobs.py) keeps graceful stop in the fast one.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

SAMPLES, SHARD_SIZE, BATCH, WORKERS = 256, 32, 8, 2
EPOCH_STEPS = SAMPLES // (BATCH * WORKERS)
STOPPED = re.compile(r"stopped at step (\d+); run the same command to resume")


@pytest.fixture(scope="module")
def epoch_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("stop-epoch")
    write_synthetic_shards(root, SAMPLES, shard_size=SHARD_SIZE, seed=5)
    return root


def train_argv(synth_data, shards: Path, storage: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mmpretrain",
        "train",
        "--config",
        "tiny",
        f"data.train={shards}",
        f"data.tokenizer={synth_data['tokenizer']}",
        f"data.batch_size={BATCH}",
        "data.shuffle_buffer=0",
        f"train.num_workers={WORKERS}",
        "train.cpus_per_worker=0.5",
        f"train.max_steps={EPOCH_STEPS}",
        "train.log_every=1",
        "observe.metrics_port=null",
        f"train.storage_path={storage}",
        f"train.run_name={name}",
        *extra,
    ]


@pytest.fixture
def start() -> Iterator[Callable[[list[str]], subprocess.Popen]]:
    """Starts `mmpretrain train` as a shell's job; whatever a failed test leaves running (the
    driver and its embedded Ray, which share its process group) is killed at teardown."""
    started: list[subprocess.Popen] = []

    def launch(argv: list[str]) -> subprocess.Popen:
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        env.pop("RAY_ADDRESS", None)
        # Its own session: nothing of the run's shares pytest's process group.
        proc = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        started.append(proc)
        return proc

    yield launch
    for proc in started:
        with contextlib.suppress(ProcessLookupError):  # nothing of it left: the usual case
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_for_step(run_dir: Path, step: int, proc: subprocess.Popen, timeout_s: float = 600) -> None:
    """Until metrics.jsonl has a row for ``step`` (rank 0 writes one per step here)."""
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if metrics.exists() and len(metrics.read_text().splitlines()) >= step:
            return
        time.sleep(0.2)
    raise AssertionError(f"no step {step} in {timeout_s}s")


def test_sigterm_checkpoints_the_step_and_the_same_command_resumes_exactly(
    synth_data, epoch_shards, tmp_path, start
) -> None:
    argv = train_argv(synth_data, epoch_shards, tmp_path, "graceful", "checkpoint.every=1000")
    run_dir = tmp_path / "graceful"
    proc = start(argv)
    wait_for_step(run_dir, 2, proc)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:] + err[-3000:]
    assert "SIGTERM: finishing the step and writing a checkpoint" in out + err
    (stopped,) = [int(step) for step in STOPPED.findall(out)]
    assert 2 <= stopped < EPOCH_STEPS, out[-3000:]

    # The only checkpoint (checkpoint.every is far away) is the stop's: complete, at the step
    # it names, with the data position of exactly the samples trained so far.
    (status,) = list_checkpoints(run_dir)
    assert status.complete and status.step == stopped, status
    position = status.manifest["data_position"]
    consumed = position["shards_finished"] * SHARD_SIZE + position["keys_consumed_in_progress"]
    assert consumed == stopped * BATCH * WORKERS, position

    # The same command resumes at the stop's step; two more steps show it trains on from
    # there (every key exactly once across a cut is proved in test_resume.py).
    resumed = subprocess.run(
        [*argv, f"train.max_steps={stopped + 2}"],
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"at step {stopped}" in resumed.stdout, resumed.stdout[-3000:]
    assert list_checkpoints(run_dir)[0].step == stopped + 2


def test_a_second_sigterm_stops_at_once_and_the_previous_checkpoint_stays_newest(
    synth_data, epoch_shards, tmp_path, start
) -> None:
    argv = train_argv(
        synth_data,
        epoch_shards,
        tmp_path,
        "twice",
        "checkpoint.every=2",
        "train.stop_grace_s=600",
    )
    run_dir = tmp_path / "twice"
    proc = start(argv)
    wait_for_step(run_dir, 3, proc)
    os.kill(proc.pid, signal.SIGTERM)
    time.sleep(0.1)  # the first is being handled; no rank has seen it yet
    os.kill(proc.pid, signal.SIGTERM)
    second = time.monotonic()
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - second
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:] + err[-3000:]
    assert "second SIGTERM: stopped at once, without a checkpoint" in err, err[-3000:]
    assert not STOPPED.search(out), out[-3000:]
    assert took < 60, f"{took:.0f}s after the second signal, with train.stop_grace_s=600"

    # What a resume would choose: the newest complete checkpoint, one of checkpoint.every's
    # (the stop never wrote its own), and the step the error names.
    statuses = list_checkpoints(run_dir)
    complete = [status.step for status in statuses if status.complete]
    assert complete and all(step % 2 == 0 for step in complete), statuses
    named = int(re.search(r"newest complete checkpoint: step (\d+)", err).group(1))
    assert named == max(complete)
    # Any checkpoint cut off mid-write has no manifest and is not complete.
    torn = [status for status in statuses if not status.complete]
    assert all(status.manifest is None for status in torn), torn
