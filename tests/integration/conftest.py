"""Training runs that several integration tests read, made once per session.

The skeleton run is `mmpretrain train` typed as a user types it, in its own process, with
relative paths and no tokenizer: the tests that resume it, report on it, prune and damage its
checkpoints work on what it wrote (on copies where they change it), so the suite pays for one
run instead of one per test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.cluster_fixture import local_cluster  # noqa: F401 (a fixture)

BATCH, WORKERS = 16, 2
FIRST_STEPS = 128  # enough for held-out recall@1 well above 10x chance (0.15-0.18 seen)
CHECKPOINT_EVERY, LOG_EVERY = 64, 16


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m mmpretrain ARGS`` in a fresh interpreter, as a user's shell runs it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mmpretrain", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


@dataclass(frozen=True)
class SkeletonRun:
    cwd: Path  # where the command ran
    run_dir: Path
    overrides: list[str]  # the run's overrides with absolute paths, to re-run it in-process
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def skeleton_run(synth_data, tmp_path_factory: pytest.TempPathFactory) -> SkeletonRun:
    cwd = tmp_path_factory.mktemp("skeleton")

    def here(name: str) -> str:  # relative, as the README's commands give paths
        return os.path.relpath(synth_data[name], cwd)

    shared = [
        f"data.batch_size={BATCH}",
        f"train.num_workers={WORKERS}",
        "train.zero_stage=2",
        "train.run_name=skeleton",
        f"checkpoint.every={CHECKPOINT_EVERY}",
        "checkpoint.keep=2",
        f"train.log_every={LOG_EVERY}",
        "optim.warmup_steps=8",
        "eval.rerank_k=0",
        f"eval.every={CHECKPOINT_EVERY}",
        "observe.metrics_port=null",
    ]
    # No data.tokenizer: the run trains one on the training captions, into its run directory.
    proc = run_cli(
        "train",
        "--config",
        "tiny",
        f"data.train={here('train')}",
        f"data.val={here('val')}",
        "train.storage_path=.",
        *shared,
        f"train.max_steps={FIRST_STEPS}",
        cwd=cwd,
    )
    absolute = [
        f"data.train={synth_data['train']}",
        f"data.val={synth_data['val']}",
        *shared,
    ]
    return SkeletonRun(cwd, cwd / "skeleton", absolute, proc.stdout, proc.stderr)
