"""Training runs that several integration tests read, made once per session.

The skeleton run is `mmpretrain train` typed as a user types it, in its own process, with
relative paths and no tokenizer, on the session's training shards plus two shards of bad and
odd samples (tests/badshards.py), scraped by a real Prometheus while it trains: the tests that
check its learning and its metrics, resume it, report on it, prune and damage its checkpoints
work on what it wrote (on copies where they change it), so the suite pays for one run instead
of one per test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.badshards import write_mixed_shards
from tests.conftest import TRAIN_SAMPLES
from tests.integration.cluster_fixture import local_cluster  # noqa: F401 (a fixture)
from tests.integration.prometheus_fixture import Scrape, prometheus  # noqa: F401 (a fixture)

BATCH, WORKERS = 16, 2
FIRST_STEPS = 128  # enough for held-out recall@1 well above 10x chance (0.15-0.18 seen)
CHECKPOINT_EVERY, LOG_EVERY = 64, 16
# The skeleton's training set: the session's shards of 128 and two mixed shards of 29 good and
# 3 odd samples each among the bad ones, which are skipped (tests/badshards.py). 576 usable
# samples: whole batches of 16 on each of the 2 workers, so no epoch ends with a dropped
# remainder and steps x 32 samples is the position; 136 steps end mid-epoch.
MIXED_GOOD = 58
MIXED_SHARDS = {"mixed-00000.tar": 32, "mixed-00001.tar.gz": 32}
SKELETON_SAMPLES = TRAIN_SAMPLES + sum(MIXED_SHARDS.values())


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """``python -m mmpretrain ARGS`` in a fresh interpreter, as a user's shell runs it."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", **(env or {})}
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
    scrape: Scrape  # Prometheus (if installed) and rank 0's port, which watched it train
    trained: tuple[float, float]  # wall-clock start and end of the command


@pytest.fixture(scope="session")
def skeleton_run(
    synth_data,
    prometheus: Scrape,  # noqa: F811 (the fixture imported above)
    tmp_path_factory: pytest.TempPathFactory,
) -> SkeletonRun:
    cwd = tmp_path_factory.mktemp("skeleton")
    train = cwd / "train"
    train.mkdir()
    for shard in synth_data["train"].glob("*.tar"):
        shutil.copy(shard, train / shard.name)
    mixed = cwd / "mixed"
    write_mixed_shards(mixed, good=MIXED_GOOD)
    for name in MIXED_SHARDS:
        (mixed / name.removeprefix("mixed-")).rename(train / name)

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
    ]
    # No data.tokenizer: the run trains one on the training captions, into its run directory.
    started = time.time()
    proc = run_cli(
        "train",
        "--config",
        "tiny",
        "data.train=train",
        f"data.val={here('val')}",
        "train.storage_path=.",
        *shared,
        f"train.max_steps={FIRST_STEPS}",
        f"observe.metrics_port={prometheus.local_port}",
        cwd=cwd,
        env=prometheus.run_env,
    )
    ended = time.time()
    prometheus.scraper.done.set()
    absolute = [
        f"data.train={train}",
        f"data.val={synth_data['val']}",
        *shared,
        "observe.metrics_port=null",
    ]
    return SkeletonRun(
        cwd,
        cwd / "skeleton",
        absolute,
        proc.stdout,
        proc.stderr,
        prometheus,
        (started, ended),
    )
