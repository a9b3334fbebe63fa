"""Training as a user runs it: the CLI, an embedded Ray, 2 workers, DeepSpeed on gloo."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmpretrain import cli
from mmpretrain.config import load_config
from mmpretrain.errors import ResourceError
from mmpretrain.train.launch import run_training
from mmpretrain.train.schedule import warmup_cosine
from tests.integration.conftest import (
    BATCH,
    CHECKPOINT_EVERY,
    FIRST_STEPS,
    LOG_EVERY,
    MIXED_SHARDS,
    SKELETON_SAMPLES,
    WORKERS,
)

pytestmark = pytest.mark.integration

SHARD_SIZE = 128  # of the session's synthetic training shards (tests/conftest.py)
# The tokenizer reads every caption training could use: a bad image does not spoil its
# caption, so the 6 bad samples with a readable one count (tests/badshards.py).
TOKENIZER_CAPTIONS = SKELETON_SAMPLES + 6
# What Ray prints that a user of mmpretrain should not see by default.
RAY_NOISE = re.compile(
    r"\bINFO\b|Started a local Ray instance|Reporting training result|Execution plan of Dataset"
    r"|Starting execution of Dataset|Progress bars disabled|Started training worker group"
    r"|repeated \d+x across cluster|PreemptionWatcher|PYTHON worker processes|UserWarning"
    r"|FutureWarning|DeprecationWarning"
)


def metric_rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_in_process(overrides: list[str], capfd: pytest.CaptureFixture[str]) -> str:
    """`mmpretrain train` through cli.main in this process (on the session's local Ray), for
    runs where the CLI's own process is not what is under test; returns what it printed."""
    code = cli.main(["train", "--config", "tiny", *overrides])
    out, err = capfd.readouterr()
    assert code == 0, out[-4000:] + err[-4000:]
    return out + err


def list_checkpoints_in_process(run_dir: Path, capfd: pytest.CaptureFixture[str]) -> list[str]:
    assert cli.main(["checkpoints", "list", str(run_dir)]) == 0
    return capfd.readouterr().out.splitlines()


def test_a_first_run_trains_its_tokenizer_learns_and_checkpoints_every_rank(skeleton_run):
    run_dir = skeleton_run.run_dir
    # No data.tokenizer was given: one was trained on the training captions, in the run dir.
    tokenizer = run_dir / "tokenizer"
    assert (tokenizer / "tokenizer.json").is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert Path(saved["data"]["tokenizer"]) == tokenizer

    # Every objective's loss falls and held-out recall rises far above chance.
    rows = metric_rows(run_dir)
    assert [row["step"] for row in rows] == list(range(LOG_EVERY, FIRST_STEPS + 1, LOG_EVERY))
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"], [row["loss"] for row in rows]
    for name in ("loss_itc", "loss_mlm", "loss_text_mlm", "loss_image_ssl"):
        assert rows[-1][name] < rows[0][name], (name, [row[name] for row in rows])
    for step in (CHECKPOINT_EVERY, FIRST_STEPS):
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
    assert [row["step"] for row in history] == [CHECKPOINT_EVERY, FIRST_STEPS]
    assert history[-1] == evaluation
    # The console carried mmpretrain's own lines only: progress, each evaluation's table once
    # (the periodic one from rank 0, the final one from the driver), no Ray INFO lines.
    output = skeleton_run.stdout + skeleton_run.stderr
    assert output.count("retrieval over 96 held-out pairs") == len(history), output[-4000:]
    assert f"step {FIRST_STEPS}/{FIRST_STEPS} | loss" in output
    assert f"tokenizer: trained on {TOKENIZER_CAPTIONS} training captions" in output
    assert not [line for line in output.splitlines() if RAY_NOISE.search(line)], output[-4000:]
    mean_recall_at_1 = (evaluation["i2t_recall@1"] + evaluation["t2i_recall@1"]) / 2
    assert mean_recall_at_1 >= 10 * chance, evaluation
    for direction in ("i2t", "t2i"):
        assert evaluation[f"{direction}_recall@1"] >= 5 * chance, evaluation
        assert evaluation[f"{direction}_recall@5"] >= 3 * evaluation["chance@5"], evaluation


SECOND = FIRST_STEPS + 8  # the resumed run's max_steps


@pytest.mark.slow  # exact resume is test_resume's in the fast tier; pruning and the damaged
# checkpoint's pass-over are unit tests there too (test_manifest.py)
def test_the_same_command_resumes_prunes_and_passes_over_a_damaged_checkpoint(
    local_ray, skeleton_run, tmp_path, capfd
) -> None:
    run_dir = tmp_path / "skeleton"  # a copy: the session's run stays as it was
    shutil.copytree(skeleton_run.run_dir, run_dir)
    rows = metric_rows(run_dir)
    command = [*skeleton_run.overrides, f"train.storage_path={tmp_path}"]

    # 1. The same command with a later max_steps continues from the last checkpoint, with the
    # tokenizer the first run trained.
    output = train_in_process([*command, f"train.max_steps={SECOND}"], capfd)
    assert f"at step {FIRST_STEPS}" in output
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
    assert position["epoch"] == state["epoch"] == SECOND * BATCH * WORKERS // SKELETON_SAMPLES
    finished = sum(MIXED_SHARDS.get(Path(url).name, SHARD_SIZE) for url in position["finished"])
    consumed = finished + sum(map(len, position["consumed"].values()))
    assert consumed == SECOND * BATCH * WORKERS - state["epoch"] * SKELETON_SAMPLES, position

    # Only the newest 2 complete checkpoints are kept.
    newest = run_dir / f"checkpoint_step_{SECOND:08d}"
    assert sorted(p.name for p in run_dir.glob("checkpoint_step_*")) == [
        f"checkpoint_step_{step:08d}" for step in (FIRST_STEPS, SECOND)
    ]

    # 2. Re-running the finished command trains nothing, evaluates nothing again, and says so
    # without starting a worker group (no "resumed from" line: no worker loaded anything).
    before = len(metric_rows(run_dir)), (run_dir / "eval.jsonl").read_text()
    output = train_in_process([*command, f"train.max_steps={SECOND}"], capfd)
    assert f"skeleton is already at step {SECOND} (train.max_steps={SECOND})" in output, output
    assert "resumed from" not in output
    assert (len(metric_rows(run_dir)), (run_dir / "eval.jsonl").read_text()) == before

    # 3. A damaged newest checkpoint is passed over, with a warning, for the one before it.
    shard = newest / f"step_{SECOND:08d}" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    assert "INCOMPLETE" in list_checkpoints_in_process(run_dir, capfd)[1]
    output = train_in_process([*command, f"train.max_steps={SECOND}"], capfd)
    assert f"checkpoint_step_{SECOND:08d} is incomplete" in output and "bytes" in output
    assert f"at step {FIRST_STEPS}" in output
    assert metric_rows(run_dir)[-1]["step"] == SECOND  # trained again up to max_steps
    assert (run_dir / f"checkpoint_step_{SECOND:08d}.incomplete").is_dir()
    assert list_checkpoints_in_process(run_dir, capfd)[1].endswith("complete")


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
