"""Exact mid-epoch resume, determinism, resume on a different number of workers, storage URIs.

One epoch of 96 samples in 6 shards; 2 workers of batch 8 take 6 steps to finish it. A run cut
at step 3 (train.stop_at) and resumed must train on every key of the epoch exactly once, and
reproduce the uninterrupted run's losses; resumed on 1 worker instead (ZeRO-2 shards converted
to DeepSpeed's universal format) it must finish the same epoch and go on from the trained loss.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from mmpretrain.config import load_config
from mmpretrain.data.shards import iter_shard
from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.errors import ResourceError
from mmpretrain.train.audit import read_sample_keys
from mmpretrain.train.checkpoint.manifest import list_checkpoints
from mmpretrain.train.checkpoint.reshard import UNIVERSAL_DIR
from mmpretrain.train.launch import run_training

pytestmark = pytest.mark.integration

SAMPLES, SHARD_SIZE, BATCH = 96, 16, 8
STEPS_PER_EPOCH = SAMPLES // (2 * BATCH)  # with 2 workers
CUT = 3
LOSS_TOLERANCE = 1e-4  # relative; CPU fp32 with deterministic data order and seeded draws


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {row["step"]: row["loss"] for row in rows}


@pytest.fixture(scope="module")
def epoch_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("epoch")
    write_synthetic_shards(root, SAMPLES, shard_size=SHARD_SIZE, seed=3)
    return root


def run(synth_data, shards: Path, storage: str, name: str, *overrides: str):
    cfg = load_config(
        "tiny",
        [
            f"data.train={shards}",
            f"data.tokenizer={synth_data['tokenizer']}",
            f"data.batch_size={BATCH}",
            "data.shuffle_buffer=0",
            "train.num_workers=2",
            "train.zero_stage=2",
            f"train.max_steps={STEPS_PER_EPOCH}",
            f"checkpoint.every={CUT}",
            "train.log_every=1",
            "optim.warmup_steps=2",
            "train.deterministic=true",
            "train.record_sample_keys=true",
            f"train.storage_path={storage}",
            f"train.run_name={name}",
            *overrides,
        ],
    )
    return run_training(cfg)


def test_cut_mid_epoch_resumes_exactly_and_reproduces_the_losses(
    local_ray, synth_data, epoch_shards, tmp_path
) -> None:
    all_keys = Counter(
        key for shard in epoch_shards.glob("*.tar") for key in dict(iter_shard(shard))
    )
    assert sum(all_keys.values()) == SAMPLES and max(all_keys.values()) == 1

    whole = run(synth_data, epoch_shards, str(tmp_path), "whole").run_dir
    # The cut run keeps its run directory behind a URI, as in an object store: checkpoints,
    # resume and logs all go through pyarrow's file system (here the local one, file://).
    store = f"file://{tmp_path}"
    run(synth_data, epoch_shards, store, "cut", f"train.stop_at={CUT}")
    cut = tmp_path / "cut"

    # Determinism: same seed and world size, same loss at every step.
    expected = losses(whole)
    assert sorted(expected) == list(range(1, STEPS_PER_EPOCH + 1))
    first_part = losses(cut)
    assert sorted(first_part) == list(range(1, CUT + 1))
    for step, loss in first_part.items():
        assert loss == pytest.approx(expected[step], rel=1e-6), (step, first_part, expected)

    # The checkpoint at the cut records where the epoch was: half of it consumed.
    (status,) = list_checkpoints(cut)
    position = status.manifest["data_position"]
    assert position["epoch"] == 0
    consumed = position["shards_finished"] * SHARD_SIZE + position["keys_consumed_in_progress"]
    assert consumed == CUT * 2 * BATCH, position

    shutil.copytree(cut, tmp_path / "elastic")  # the same cut, to resume on 1 worker below

    # Resumed on 2 workers: the rest of the epoch, the uninterrupted run's losses.
    run(synth_data, epoch_shards, store, "cut")
    resumed = losses(cut)
    assert sorted(resumed) == list(range(1, STEPS_PER_EPOCH + 1))
    for step in range(CUT + 1, STEPS_PER_EPOCH + 1):
        assert resumed[step] == pytest.approx(expected[step], rel=LOSS_TOLERANCE), (
            step,
            resumed,
            expected,
        )
    trained = Counter(key for _, key in read_sample_keys(cut))
    assert trained == all_keys, (trained - all_keys, all_keys - trained)

    # Resumed on 1 worker: the ZeRO-2 shards are converted, the epoch's rest takes 6 steps of
    # 8 samples, every key is still trained on once, and training goes on from the trained
    # model rather than from an untrained one.
    one_worker_steps = CUT + (SAMPLES - CUT * 2 * BATCH) // BATCH
    run(
        synth_data,
        epoch_shards,
        str(tmp_path),
        "elastic",
        "train.num_workers=1",
        f"train.max_steps={one_worker_steps}",
    )
    elastic = tmp_path / "elastic"
    assert (elastic / UNIVERSAL_DIR / status.path.name / "converted.json").is_file()
    trained = Counter(key for _, key in read_sample_keys(elastic))
    assert trained == all_keys, (trained - all_keys, all_keys - trained)
    after = losses(elastic)
    assert sorted(after) == list(range(1, one_worker_steps + 1))
    untrained = expected[1]
    assert after[CUT + 1] < untrained - 0.5 * (untrained - expected[CUT]), (after, expected)
    newest = list_checkpoints(elastic)[0]
    assert newest.complete and newest.manifest["world_size"] == 1
    assert newest.manifest["step"] == one_worker_steps
    finished = newest.manifest["data_position"]
    assert finished["shards_finished"] == SAMPLES // SHARD_SIZE, finished  # the whole epoch
    assert finished["keys_consumed_in_progress"] == 0, finished


def test_a_worker_group_that_never_fits_fails_within_the_timeout(
    local_ray, synth_data, epoch_shards, tmp_path
) -> None:
    """The cluster has the CPUs in total, but another job holds them: no endless retry."""
    import ray

    @ray.remote(num_cpus=3)
    class Squatter:
        def ready(self) -> bool:
            return True

    squatter = Squatter.remote()
    ray.get(squatter.ready.remote())
    try:
        with pytest.raises(ResourceError, match=r"in 3 attempts of train\.start_timeout_s=2"):
            run(synth_data, epoch_shards, str(tmp_path), "never", "train.start_timeout_s=2")
    finally:
        ray.kill(squatter)
