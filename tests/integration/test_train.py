"""Training as a user runs it: the CLI, an embedded Ray, 2 workers, DeepSpeed on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.errors import ResourceError
from mmpretrain.train.launch import run_training
from mmpretrain.train.schedule import warmup_cosine
from tests.conftest import TRAIN_SAMPLES

pytestmark = pytest.mark.integration

BATCH = 16
WORKERS = 2
SHARD_SIZE = 128  # of the session's synthetic training shards (conftest.py)


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


FIRST, SECOND = 64, 72  # steps of the fresh run, then of the resumed one
CHECKPOINT_EVERY, LOG_EVERY = 32, 8


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
        f"checkpoint.every={CHECKPOINT_EVERY}",
        f"train.log_every={LOG_EVERY}",
        "optim.warmup_steps=8",
        "eval.rerank_k=0",
        f"eval.every={CHECKPOINT_EVERY}",
        "checkpoint.keep=2",
    ]
    run_dir = tmp_path / "skeleton"

    # 1. A fresh run: every objective's loss falls and held-out recall rises above chance.
    run_cli(*command, f"train.max_steps={FIRST}", cwd=tmp_path)
    rows = metric_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(LOG_EVERY, FIRST + 1, LOG_EVERY))
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [row["loss"] for row in rows]
    for name in ("loss_itc", "loss_mlm", "loss_text_mlm", "loss_image_ssl"):
        assert rows[-1][name] < rows[0][name], (name, [row[name] for row in rows])
    for step in (CHECKPOINT_EVERY, FIRST):
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
    chance = 1 / 96  # 96 held-out pairs: a random ranking puts the true one first 1% of the time
    assert evaluation["candidates"] == 96 and evaluation["chance@1"] == pytest.approx(chance)
    history = [json.loads(line) for line in (run_dir / "eval.jsonl").read_text().splitlines()]
    assert [row["step"] for row in history] == [CHECKPOINT_EVERY, FIRST]  # eval.every + final
    assert history[-1] == evaluation
    # 64 small steps lift recall to several times chance. Recall@1 rests on 96 single hits and
    # varies run to run (2 to 6 hits seen), so the firm bound is on recall@5.
    for direction in ("i2t", "t2i"):
        assert evaluation[f"{direction}_recall@1"] > chance, evaluation
        assert evaluation[f"{direction}_recall@5"] >= 3 * evaluation["chance@5"], evaluation
        assert evaluation[f"{direction}_recall@10"] >= 2 * evaluation["chance@10"], evaluation

    # 2. The same command with a later max_steps continues from the last checkpoint.
    proc = run_cli(*command, f"train.max_steps={SECOND}", cwd=tmp_path)
    assert f"at step {FIRST}" in proc.stdout + proc.stderr
    resumed = metric_rows(run_dir)[len(rows) :]
    assert [row["step"] for row in resumed] == [SECOND]
    assert resumed[0]["samples_seen"] == SECOND * BATCH * WORKERS
    # The scheduler resumed too: the rate is the schedule's value at SECOND, not at step 8.
    expected_lr = load_config("tiny").optim.lr * warmup_cosine(
        SECOND, warmup_steps=8, max_steps=SECOND, min_ratio=0.1
    )
    assert resumed[0]["lr"] == pytest.approx(expected_lr, rel=1e-4)
    # Optimizer and weights resumed: no jump back to the untrained loss.
    assert resumed[0]["loss"] < rows[0]["loss"]
    state = json.loads((run_dir / f"checkpoint_step_{SECOND:08d}" / "train_state.json").read_text())
    assert (state["step"], state["samples_seen"]) == (SECOND, SECOND * BATCH * WORKERS)
    # The data position: where in its epoch the run is, every rank's consumption merged.
    position = state["data_position"]
    assert position["epoch"] == state["epoch"] == SECOND * BATCH * WORKERS // TRAIN_SAMPLES
    consumed = len(position["finished"]) * SHARD_SIZE + sum(map(len, position["consumed"].values()))
    assert consumed == SECOND * BATCH * WORKERS - state["epoch"] * TRAIN_SAMPLES, position

    # Only the newest 2 complete checkpoints are kept.
    newest = run_dir / f"checkpoint_step_{SECOND:08d}"
    assert sorted(p.name for p in run_dir.glob("checkpoint_step_*")) == [
        f"checkpoint_step_{step:08d}" for step in (FIRST, SECOND)
    ]

    # 3. Re-running the finished command resumes at max_steps and repeats no step.
    before = len(metric_rows(run_dir))
    proc = run_cli(*command, f"train.max_steps={SECOND}", cwd=tmp_path)
    assert f"at step {SECOND}" in proc.stdout + proc.stderr
    assert len(metric_rows(run_dir)) == before

    # 4. A damaged newest checkpoint is passed over, with a warning, for the one before it.
    shard = newest / f"step_{SECOND:08d}" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    listing = subprocess.run(
        [sys.executable, "-m", "mmpretrain", "checkpoints", "list", str(run_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert "INCOMPLETE" in listing.stdout.splitlines()[1], listing.stdout
    proc = run_cli(*command, f"train.max_steps={SECOND}", cwd=tmp_path)
    output = proc.stdout + proc.stderr
    assert f"checkpoint_step_{SECOND:08d} is incomplete" in output and "bytes" in output
    assert f"at step {FIRST}" in output
    assert metric_rows(run_dir)[-1]["step"] == SECOND  # trained again up to max_steps
    assert (run_dir / f"checkpoint_step_{SECOND:08d}.incomplete").is_dir()
    listing = subprocess.run(
        [sys.executable, "-m", "mmpretrain", "checkpoints", "list", str(run_dir)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listing.stdout.splitlines()[1].endswith("complete"), listing.stdout


def test_speed_and_model_switches_train_on_cpu_without_zero(local_ray, synth_data, tmp_path):
    """ZeRO off, bf16 autocast on CPU, activation checkpointing, momentum distillation and the
    merged fusion variant in one run: each switch works on CPU, and together they still learn."""
    cfg = load_config(
        "tiny",
        [
            f"data.train={synth_data['train']}",
            f"data.tokenizer={synth_data['tokenizer']}",
            "data.batch_size=8",
            "train.zero_stage=0",
            "train.precision=bf16",
            "train.activation_checkpointing=true",
            "train.channels_last=false",
            "objectives.distill=true",
            "model.fusion.type=merged",
            "train.max_steps=6",
            "checkpoint.every=6",
            "train.log_every=1",
            "optim.warmup_steps=2",
            f"train.storage_path={tmp_path}",
            "train.run_name=switches",
            "train.cpus_per_worker=1",
        ],
    )
    result = run_training(cfg)
    rows = metric_rows(result.run_dir)
    assert [row["step"] for row in rows] == list(range(1, 7))
    assert min(row["loss"] for row in rows[3:]) < rows[0]["loss"], [r["loss"] for r in rows]
    files = {
        p.name for p in (result.run_dir / "checkpoint_step_00000006" / "step_00000006").iterdir()
    }
    # Stage 0: one replicated model + optimizer file, nothing per rank.
    assert "mp_rank_00_model_states.pt" in files
    assert not any(name.startswith("zero_pp_rank_") for name in files)
    # The momentum encoder is saved with the model and lags the online encoder (EMA 0.995).
    from mmpretrain.train.checkpoint.consolidate import load_task_state

    state = load_task_state(result.run_dir / "checkpoint_step_00000006")
    online = state["encoder.image_proj.weight"]
    momentum = state["momentum_encoder.image_proj.weight"]
    assert not torch.equal(online, momentum)


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
