"""Bad samples through the real pipeline and a real training run: skipped, counted, bounded."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from mmpretrain.config import load_config
from mmpretrain.data import quality
from mmpretrain.data.pipeline import build_dataset, collate_batch
from mmpretrain.errors import DataQualityError
from mmpretrain.train.launch import run_training
from tests.badshards import BAD_REASONS, write_mixed_shards, write_truncated_copy

pytestmark = pytest.mark.integration

EXPECTED_SKIPS = Counter(f"skipped_{reason}" for reason in BAD_REASONS.values())


def settled_snapshot(name: str, seen: int, timeout: float = 30.0) -> dict[str, int]:
    """Counts are booked fire-and-forget by data tasks; wait until all of them have landed."""
    deadline = time.monotonic() + timeout
    while True:
        counts = quality.snapshot(name)
        if counts.get("seen", 0) >= seen or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def test_pipeline_skips_and_books_every_bad_sample_and_survives_a_cut_tar(
    local_ray, synth_data, tmp_path
) -> None:
    kinds = write_mixed_shards(tmp_path / "shards", good=20)
    before_damage = write_truncated_copy(tmp_path / "shards")
    cfg = load_config("tiny", [f"data.tokenizer={synth_data['tokenizer']}"])
    name = quality.counter_name("pipeline-test", "train")
    handle = quality.create_counter(name)
    dataset = build_dataset(str(tmp_path / "shards"), cfg.data, counter=name)
    keys = [
        key
        for batch in dataset.iter_torch_batches(batch_size=8, collate_fn=collate_batch)
        for key in batch["key"]
    ]
    # The damaged copy gives back what came before the damage, and the damage is one count.
    assert sorted(keys) == sorted(kinds["good"] + kinds["odd"] + before_damage)
    total = sum(len(v) for v in kinds.values()) + len(before_damage) + 1
    expected = EXPECTED_SKIPS + Counter(seen=total, skipped_truncated_tar=1)
    assert Counter(settled_snapshot(name, total)) == expected
    del handle


def _mixed_run(synth_data, tmp_path: Path, *overrides: str):
    shards = tmp_path / "shards"
    kinds = write_mixed_shards(shards, good=75)  # 9 bad of 90 samples: 10%
    cfg = load_config(
        "tiny",
        [
            f"data.train={shards}",
            f"data.tokenizer={synth_data['tokenizer']}",
            "data.batch_size=8",
            "train.max_steps=5",  # 81 usable / (2 workers x 8) = 5 steps: exactly one epoch
            "checkpoint.every=5",
            "train.log_every=5",
            f"train.storage_path={tmp_path}",
            "train.run_name=mixed",
            *overrides,
        ],
    )
    return cfg, kinds


def test_training_over_ten_percent_bad_data_completes_and_reports_counts(
    local_ray, synth_data, tmp_path
) -> None:
    # ZeRO off here (stage 0) and bf16 autocast on the CPU: this run also shows that layout of
    # a checkpoint, and that bf16 trains on CPU.
    cfg, _ = _mixed_run(synth_data, tmp_path, "train.zero_stage=0", "train.precision=bf16")
    result = run_training(cfg)
    (row,) = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert row["step"] == 5
    assert row["seen"] == 90
    assert {k: v for k, v in row.items() if k.startswith("skipped_")} == EXPECTED_SKIPS
    assert row["bad_fraction"] == pytest.approx(0.1)
    assert result.metrics["skipped_corrupt_image"] == 2 and result.metrics["seen"] == 90
    files = {
        p.name for p in (result.run_dir / "checkpoint_step_00000005" / "step_00000005").iterdir()
    }
    # Stage 0: one replicated model + optimizer file, nothing per rank.
    assert "mp_rank_00_model_states.pt" in files
    assert not any(name.startswith("zero_pp_rank_") for name in files)


@pytest.mark.slow  # a second run; the fast tier counts bad samples in the run above
def test_bad_fraction_over_the_limit_stops_the_run_with_the_reason(
    local_ray, synth_data, tmp_path
) -> None:
    cfg, _ = _mixed_run(synth_data, tmp_path, "data.max_bad_fraction=0.05", "train.log_every=1")
    with pytest.raises(DataQualityError, match=r"more than data\.max_bad_fraction=0\.05"):
        run_training(cfg)
