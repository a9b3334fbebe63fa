"""The Ray Data pipeline: WebDataset shards -> decoded, cropped, tokenized batches.

``ResilientWebDatasetSource`` hands over raw member bytes (as ``read_webdataset(decoder=None)``
does) so decoding happens once, in our ``map_batches`` step, where a bad sample can be dropped
and counted instead of failing a block; unlike ``read_webdataset`` it also survives a damaged
tar.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray.data
import torch
from ray.data import FileShuffleConfig
from ray.data.collate_fn import NumpyBatchCollateFn

from mmpretrain.config import DataConfig
from mmpretrain.data.mixing import mix_sources
from mmpretrain.data.shards import expand_shards
from mmpretrain.data.transforms import IMAGE_EXTENSIONS, preprocess_batch
from mmpretrain.data.webdataset_source import ResilientWebDatasetSource

# Members read from each sample (any case); anything else in the tar is ignored.
MEMBER_SUFFIXES = frozenset([*IMAGE_EXTENSIONS, "txt", "json", "cls"])
SHARD_FILE_EXTENSIONS = ["tar", "tgz", "gz"]


def training_shards(cfg: DataConfig, seed: int) -> list[str]:
    """data.train's shards, or data.sources' shards mixed by weight."""
    if cfg.sources:
        return mix_sources([(expand_shards(s.train), s.weight) for s in cfg.sources], seed)
    return expand_shards(cfg.train)


def build_dataset(
    shards: str | list[str],
    cfg: DataConfig,
    *,
    shuffle_seed: int | None = None,
    counter: str | None = None,
    resume_filter_name: str | None = None,
) -> ray.data.Dataset:
    """Streams ``shards`` (a pattern, or a list of shard paths) as training-ready rows.

    With ``shuffle_seed`` set the shard order is shuffled per epoch (seeded); evaluation passes
    None and reads shards in order. ``counter`` names the run's QualityCounter actor that books
    seen and skipped samples; ``resume_filter_name`` the run's ResumeFilter, which tells a
    resumed epoch what it already trained on.
    """
    paths = expand_shards(shards) if isinstance(shards, str) else list(shards)
    shuffle = None
    if shuffle_seed is not None:
        shuffle = FileShuffleConfig(seed=shuffle_seed, reseed_after_execution=True)
    source = ResilientWebDatasetSource(
        paths,
        member_suffixes=MEMBER_SUFFIXES,
        resume_filter_name=resume_filter_name,
        shuffle=shuffle,
        file_extensions=SHARD_FILE_EXTENSIONS,
    )
    raw = ray.data.read_datasource(source, override_num_blocks=len(paths))
    return raw.map_batches(
        preprocess_batch,
        batch_size=None,  # whole read blocks: lets Ray fuse read + preprocess into one task
        batch_format="numpy",
        # The data section itself travels (pickled) to the tasks: one source of the sample
        # rules for training, evaluation, `data inspect` and reports.
        fn_kwargs={"cfg": cfg, "counter": counter},
    )


class CollateBatch(NumpyBatchCollateFn):
    """numpy batch -> torch tensors, keeping sample keys and class labels as lists of str.

    Keys travel with every batch so the trainer can log what it consumed (the data position of a
    checkpoint) without a second pass over the shards; Ray's default collation rejects strings.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: torch.from_numpy(batch[name]) for name in ("image", "input_ids", "attention_mask")
        }
        out["key"] = [str(key) for key in batch["key"]]
        out["url"] = [str(url) for url in batch["url"]]
        out["label"] = [str(label) for label in batch["label"]]
        return out


collate_batch = CollateBatch()
