"""The Ray Data pipeline on a real local Ray over real tar shards."""

from __future__ import annotations

import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.data.pipeline import build_dataset, collate_batch
from mmpretrain.data.shards import expand_shards, read_shard

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
    expected = {key for path in expand_shards(str(synth_data["train"])) for key in read_shard(path)}
    assert len(keys) == len(expected) and set(keys) == expected
