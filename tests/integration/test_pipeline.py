"""The Ray Data pipeline on a real local Ray over real tar shards."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.data.pipeline import (
    NOT_WRITABLE_WARNING,
    CollateBatch,
    build_dataset,
    collate_batch,
)
from mmpretrain.data.shards import expand_shards, iter_shard

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-uri"])
def test_pipeline_delivers_every_sample_once_with_configured_shapes(
    local_ray, synth_data, as_uri: bool
) -> None:
    cfg = load_config(
        "tiny",
        [f"data.tokenizer={synth_data['tokenizer']}", "data.image_size=48", "data.max_text_len=24"],
    )
    pattern = f"file://{synth_data['train']}" if as_uri else str(synth_data["train"])
    dataset = build_dataset(pattern, cfg.data, shuffle_seed=0)
    keys: list[str] = []
    for batch in dataset.iter_torch_batches(batch_size=32, collate_fn=collate_batch):
        assert batch["image"].dtype == torch.uint8
        assert batch["image"].shape[1:] == (48, 48, 3)
        assert batch["input_ids"].dtype == torch.int64
        assert batch["input_ids"].shape[1:] == (24,)
        assert batch["attention_mask"].shape == batch["input_ids"].shape
        assert (batch["attention_mask"][:, 0] == 1).all()
        keys.extend(batch["key"])
    expected = {
        key for path in expand_shards(str(synth_data["train"])) for key in dict(iter_shard(path))
    }
    assert len(keys) == len(expected) and set(keys) == expected


def test_sources_are_mixed_by_weight_through_the_pipeline(local_ray, synth_data, tmp_path):
    from mmpretrain.data.pipeline import training_shards
    from mmpretrain.data.shards import write_shard
    from mmpretrain.data.synth import synth_sample

    for name, shards in (("a", 4), ("b", 4)):
        for shard in range(shards):
            samples = []
            for offset in range(8):
                jpeg, caption = synth_sample(shard * 8 + offset, seed=ord(name), side=64)
                samples.append((f"{name}{shard}{offset}", {"jpg": jpeg, "txt": caption.encode()}))
            (tmp_path / name).mkdir(exist_ok=True)
            write_shard(tmp_path / name / f"{shard:05d}.tar", samples)
    cfg = load_config(
        "tiny",
        [
            f"data.tokenizer={synth_data['tokenizer']}",
            f"data.sources=[{{train: {tmp_path / 'a'}, weight: 3}}, {{train: {tmp_path / 'b'}}}]",
        ],
    )
    shards = training_shards(cfg.data, seed=0)
    dataset = build_dataset(shards, cfg.data, shuffle_seed=0)
    keys = [
        k
        for b in dataset.iter_torch_batches(batch_size=16, collate_fn=collate_batch)
        for k in b["key"]
    ]
    by_source = {name: sum(k.startswith(name) for k in keys) for name in "ab"}
    # 8 shards in all: 6 drawn from a (4 shards, two of them twice), 2 from b.
    assert by_source == {"a": 6 * 8, "b": 2 * 8}


class WatchedCollate(CollateBatch):
    """``collate_batch`` that also notes, per batch, whether Ray's arrays arrived read-only and
    whether the tensors share their memory."""

    def __init__(self) -> None:
        super().__init__()
        self.read_only: list[bool] = []
        self.shared: list[bool] = []

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out = super().__call__(batch)
        for name in ("image", "input_ids", "attention_mask"):
            self.read_only.append(not batch[name].flags.writeable)
            self.shared.append(out[name].data_ptr() == batch[name].ctypes.data)
        return out


def test_ray_batches_are_read_only_and_collate_shares_them_silently(local_ray, synth_data):
    cfg = load_config("tiny", [f"data.tokenizer={synth_data['tokenizer']}"])
    dataset = build_dataset(str(synth_data["val"]), cfg.data)
    collate = WatchedCollate()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = [b["image"] for b in dataset.iter_torch_batches(batch_size=16, collate_fn=collate)]
    assert sum(len(image) for image in images) > 0
    # The cause: Ray hands over views of immutable Arrow buffers. The fix: shared, not copied,
    # and torch's warning about it does not reach the training loop.
    assert collate.read_only and all(collate.read_only)
    assert all(collate.shared)
    assert not [w for w in caught if NOT_WRITABLE_WARNING in str(w.message)]


def test_random_resized_crop_is_for_the_training_split_only_and_reproducible(
    local_ray, synth_data
) -> None:
    overrides = [f"data.tokenizer={synth_data['tokenizer']}", "data.image_size=32"]
    centre = load_config("tiny", overrides).data
    random_crop = load_config(
        "tiny", [*overrides, "data.crop=random_resized", "data.crop_scale=[0.2,0.5]"]
    ).data
    shards = str(synth_data["val"])

    def images(dataset) -> dict[str, np.ndarray]:
        out = {}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            out.update(zip(batch["key"], batch["image"], strict=True))
        return out

    reference = images(build_dataset(shards, centre))
    # Evaluation builds without a crop seed: the centre crop whatever data.crop says.
    held_out = images(build_dataset(shards, random_crop))
    trained = images(build_dataset(shards, random_crop, shuffle_seed=0, crop_seed=5))
    again = images(build_dataset(shards, random_crop, shuffle_seed=1, crop_seed=5))
    assert reference.keys() == held_out.keys() == trained.keys() == again.keys()
    assert all(np.array_equal(reference[k], held_out[k]) for k in reference)
    assert (
        sum(not np.array_equal(reference[k], trained[k]) for k in reference) > len(reference) // 2
    )
    # Seeded per sample, not by the task that ran it or the shard order.
    assert all(np.array_equal(trained[k], again[k]) for k in trained)
