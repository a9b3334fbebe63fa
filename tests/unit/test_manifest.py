"""A checkpoint is complete only when its manifest lists every file with the right bytes."""

from __future__ import annotations

from pathlib import Path

from mmpretrain.train.checkpoint.manifest import (
    MANIFEST,
    check_checkpoint,
    describe_files,
    format_listing,
    list_checkpoints,
    newest_complete,
    prune_checkpoints,
    write_manifest,
)


def fake_checkpoint(run_dir: Path, step: int, with_manifest: bool = True) -> Path:
    folder = run_dir / f"checkpoint_step_{step:08d}"
    (folder / f"step_{step:08d}").mkdir(parents=True)
    (folder / "latest").write_text(f"step_{step:08d}")
    (folder / f"step_{step:08d}" / "mp_rank_00_model_states.pt").write_bytes(bytes(range(256)) * 8)
    (folder / f"step_{step:08d}" / "zero_pp_rank_1_optim.pt").write_bytes(b"x" * 1000)
    if with_manifest:
        write_manifest(folder, describe_files(folder), {"step": step, "world_size": 2})
    return folder


def test_complete_checkpoint_passes_and_damage_is_named(tmp_path) -> None:
    folder = fake_checkpoint(tmp_path, 4)
    assert check_checkpoint(folder).complete
    shard = folder / "step_00000004" / "zero_pp_rank_1_optim.pt"

    shard.write_bytes(b"x" * 600)  # truncated
    status = check_checkpoint(folder)
    assert not status.complete
    assert "zero_pp_rank_1_optim.pt has 600 bytes, the manifest says 1000" in status.reason

    shard.write_bytes(b"y" * 1000)  # same size, other bytes
    assert "fails its checksum" in check_checkpoint(folder).reason

    shard.unlink()
    assert "is missing" in check_checkpoint(folder).reason
    (folder / MANIFEST).unlink()
    assert "no manifest" in check_checkpoint(folder).reason


def test_resume_choice_skips_incomplete_newer_checkpoints(tmp_path) -> None:
    fake_checkpoint(tmp_path, 2)
    fake_checkpoint(tmp_path, 4)
    newest = fake_checkpoint(tmp_path, 6)
    (newest / "step_00000006" / "mp_rank_00_model_states.pt").write_bytes(b"cut")
    fake_checkpoint(tmp_path, 8, with_manifest=False)  # a save that never finished

    chosen, skipped = newest_complete(tmp_path)
    assert chosen is not None and chosen.step == 4
    assert [s.step for s in skipped] == [8, 6]

    table = format_listing(list_checkpoints(tmp_path))
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [
        f"checkpoint_step_{step:08d}" for step in (8, 6, 4, 2)
    ]
    assert "INCOMPLETE: no manifest" in lines[1] and "INCOMPLETE" in lines[2]
    assert lines[3].endswith("complete") and " 2  " in lines[3]  # world size from the manifest


def test_pruning_keeps_the_newest_complete_ones_and_anything_newer(tmp_path) -> None:
    for step in (2, 4, 6, 8):
        fake_checkpoint(tmp_path, step)
    fake_checkpoint(tmp_path, 10, with_manifest=False)  # still being written by another rank
    (tmp_path / "checkpoint_step_00000008" / "latest").write_text("cut")  # damaged
    gone = prune_checkpoints(tmp_path, keep=2)
    assert sorted(p.name for p in gone) == ["checkpoint_step_00000002"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"checkpoint_step_{step:08d}" for step in (4, 6, 8, 10)
    ]
