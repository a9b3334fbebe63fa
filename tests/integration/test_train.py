"""Training as a user runs it: the CLI, an embedded Ray, 2 workers, DeepSpeed on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmpretrain.config import load_config
from mmpretrain.errors import ResourceError
from mmpretrain.train.launch import run_training
from mmpretrain.train.schedule import warmup_cosine

pytestmark = pytest.mark.integration

BATCH = 16
WORKERS = 2


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
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


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_zero2_run_learns_checkpoints_every_rank_and_resumes(synth_data, tmp_path) -> None:
    # Paths relative to the working directory, as the README's commands give them: the workers
    # run elsewhere and must still find the shards and the tokenizer.
    def here(name: str) -> str:
        return os.path.relpath(synth_data[name], tmp_path)

    command = [
        "train",
        "--config",
        "tiny",
        f"data.train={here('train')}",
        f"data.val={here('val')}",
        f"data.tokenizer={here('tokenizer')}",
        f"data.batch_size={BATCH}",
        f"train.num_workers={WORKERS}",
        "train.zero_stage=2",
        "train.storage_path=.",
        "train.run_name=skeleton",
        "train.checkpoint_every=8",
        "train.log_every=2",
        "train.warmup_steps=4",
    ]
    run_dir = tmp_path / "skeleton"

    # 1. A fresh run of 16 steps.
    run_cli(*command, "train.max_steps=16", cwd=tmp_path)
    rows = metric_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(2, 17, 2))
    assert rows[-1]["loss"] < 0.9 * rows[0]["loss"], [row["loss"] for row in rows]
    for step in (8, 16):
        checkpoint = run_dir / f"checkpoint_step_{step:08d}"
        shard_files = {p.name for p in (checkpoint / f"step_{step:08d}").iterdir()}
        # ZeRO-2 partitions optimizer state: one file per rank, merged by Ray into one folder.
        assert {
            "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt",
            "mp_rank_00_model_states.pt",
        } <= shard_files
        assert json.loads((checkpoint / "train_state.json").read_text())["step"] == step
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert evaluation["candidates"] == 96 and evaluation["chance@1"] == pytest.approx(1 / 96)
    assert {"i2t_recall@1", "i2t_recall@5", "t2i_recall@1", "t2i_recall@5"} <= set(evaluation)

    # 2. The same command with a later max_steps continues from step 16.
    proc = run_cli(*command, "train.max_steps=24", cwd=tmp_path)
    assert "at step 16" in proc.stdout + proc.stderr
    resumed = metric_rows(run_dir)[len(rows) :]
    assert [row["step"] for row in resumed] == [18, 20, 22, 24]
    assert resumed[0]["samples_seen"] == 18 * BATCH * WORKERS
    # The scheduler resumed too: the rate is the schedule's value at step 18, not step 2.
    expected_lr = load_config("tiny").train.lr * warmup_cosine(
        18, warmup_steps=4, max_steps=24, min_ratio=0.1
    )
    assert resumed[0]["lr"] == pytest.approx(expected_lr, rel=1e-4)
    # Optimizer and weights resumed: no jump back to the untrained loss.
    assert resumed[0]["loss"] < rows[0]["loss"]
    state = json.loads((run_dir / "checkpoint_step_00000024" / "train_state.json").read_text())
    assert state == {"step": 24, "epoch": state["epoch"], "samples_seen": 24 * BATCH * WORKERS}

    # 3. Re-running the finished command resumes at max_steps and repeats no step.
    before = len(metric_rows(run_dir))
    proc = run_cli(*command, "train.max_steps=24", cwd=tmp_path)
    assert "at step 24" in proc.stdout + proc.stderr
    assert len(metric_rows(run_dir)) == before
    assert sorted(p.name for p in run_dir.glob("checkpoint_step_*")) == [
        "checkpoint_step_00000008",
        "checkpoint_step_00000016",
        "checkpoint_step_00000024",
    ]


@pytest.mark.parametrize(
    ("stage", "per_rank_file"),
    [
        (0, None),
        (3, "zero_pp_rank_{rank}_mp_rank_00_model_states.pt"),
    ],
)
def test_other_zero_stages_train_and_shard_as_configured(
    local_ray, synth_data, tmp_path, stage, per_rank_file
) -> None:
    cfg = load_config(
        "tiny",
        [
            f"data.train={synth_data['train']}",
            f"data.tokenizer={synth_data['tokenizer']}",
            f"data.batch_size={BATCH}",
            f"train.zero_stage={stage}",
            "train.max_steps=6",
            "train.checkpoint_every=6",
            "train.log_every=1",
            "train.warmup_steps=2",
            f"train.storage_path={tmp_path}",
            f"train.run_name=stage{stage}",
            "train.cpus_per_worker=1",
        ],
    )
    result = run_training(cfg)
    rows = metric_rows(result.run_dir)
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert min(row["loss"] for row in rows[3:]) < rows[0]["loss"]
    files = {
        p.name for p in (result.run_dir / "checkpoint_step_00000006" / "step_00000006").iterdir()
    }
    if per_rank_file is None:  # stage 0: one replicated model + optimizer file, nothing per rank
        assert not any(name.startswith("zero_pp_rank_") for name in files)
        assert "mp_rank_00_model_states.pt" in files
    else:
        assert {per_rank_file.format(rank=r) for r in range(WORKERS)} <= files


def test_unschedulable_worker_group_fails_fast_with_the_keys(
    local_ray, synth_data, tmp_path
) -> None:
    cfg = load_config(
        "tiny",
        [
            f"data.train={synth_data['train']}",
            f"data.tokenizer={synth_data['tokenizer']}",
            "train.num_workers=8",
            f"train.storage_path={tmp_path}",
        ],
    )
    with pytest.raises(ResourceError, match=r"train\.num_workers=8 .* needs 8 CPUs"):
        run_training(cfg)


def test_missing_shards_fail_before_ray_starts(tmp_path, synth_data) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mmpretrain",
            "train",
            f"data.train={tmp_path}/nothing-*.tar",
            f"data.tokenizer={synth_data['tokenizer']}",
            f"train.storage_path={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "nothing-*.tar" in proc.stderr and "matches no shard" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
