"""Shared fixtures: real synthetic shards and a real tokenizer, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set explicitly so local clusters started by tests (and by the CLI they run) never depend on a
# token left in ~/.ray by some other run; clients of those clusters inherit it.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_DEDUP_LOGS", "1")

from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.data.tokenizer import train_tokenizer

TRAIN_SAMPLES = 512
VAL_SAMPLES = 96


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synth")
    write_synthetic_shards(root / "train", TRAIN_SAMPLES, shard_size=128, seed=0)
    write_synthetic_shards(root / "val", VAL_SAMPLES, shard_size=48, seed=0, first_index=10**6)
    tokenizer = train_tokenizer(str(root / "train"), root / "tokenizer", vocab_size=300)
    return {"train": root / "train", "val": root / "val", "tokenizer": tokenizer}


@pytest.fixture(scope="session")
def local_ray():
    """One real local Ray for the in-process integration tests of this session."""
    import ray

    # address="local": a fresh instance even while a test's multi-node Cluster is up.
    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=True)
    yield ray
    ray.shutdown()
