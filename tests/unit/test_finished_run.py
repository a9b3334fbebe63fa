"""A finished run re-run ends on the driver, before Ray, only when nothing is left to do."""

from __future__ import annotations

import json

from mmpretrain.config import load_config
from mmpretrain.train.launch import finished_result
from tests.unit.test_manifest import fake_checkpoint


def config(tmp_path, *overrides: str):
    return load_config(
        "tiny",
        [
            f"train.storage_path={tmp_path}",
            "train.run_name=done",
            "train.max_steps=8",
            f"data.val={tmp_path}/val",
            *overrides,
        ],
    )


def test_a_run_at_its_last_step_with_its_final_evaluation_is_finished(tmp_path, capsys) -> None:
    run_dir = tmp_path / "done"
    fake_checkpoint(run_dir, 4)
    assert finished_result(config(tmp_path)) is None  # 4 of 8 steps: the workers go on
    fake_checkpoint(run_dir, 8)
    assert finished_result(config(tmp_path)) is None  # no final evaluation yet
    (run_dir / "eval.json").write_text(json.dumps({"step": 8, "i2t_recall@1": 0.5}))

    result = finished_result(config(tmp_path))
    assert result is not None and result.checkpoint.endswith("checkpoint_step_00000008")
    assert result.metrics["i2t_recall@1"] == 0.5
    assert "done is already at step 8 (train.max_steps=8)" in capsys.readouterr().out
    # A sweep trial always starts (Tune needs its reports); a paused invocation is finished
    # at its stop_at, and told which key to raise.
    assert finished_result(config(tmp_path, "observe.sweep=s")) is None
    assert finished_result(config(tmp_path, "train.stop_at=4", "train.max_steps=16"))
    assert "raise train.stop_at to go on" in capsys.readouterr().out


def test_a_damaged_last_checkpoint_is_left_to_the_workers(tmp_path) -> None:
    run_dir = tmp_path / "done"
    fake_checkpoint(run_dir, 8)
    (run_dir / "eval.json").write_text(json.dumps({"step": 8}))
    shard = run_dir / "checkpoint_step_00000008" / "step_00000008" / "zero_pp_rank_1_optim.pt"
    shard.write_bytes(b"y" * 1000)  # right size, wrong bytes: only the checksum tells
    assert finished_result(config(tmp_path)) is None
