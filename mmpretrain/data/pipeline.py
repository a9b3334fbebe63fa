"""The Ray Data pipeline: WebDataset shards -> decoded, cropped, tokenized batches.

``ResilientWebDatasetSource`` hands over raw member bytes (as ``read_webdataset(decoder=None)``
does) so decoding happens once, in our ``map_batches`` step, where a bad sample can be dropped
and counted instead of failing a block; unlike ``read_webdataset`` it also survives a damaged
tar.
"""

from __future__ import annotations

import warnings
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
# How torch's warning about a tensor over read-only memory starts (utils/tensor_numpy.cpp).
NOT_WRITABLE_WARNING = "The given NumPy array is not writable"


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
    crop_seed: int | None = None,
) -> ray.data.Dataset:
    """Streams ``shards`` (a pattern, or a list of shard paths) as training-ready rows.

    With ``shuffle_seed`` set the shard order is shuffled per epoch (seeded); evaluation passes
    None and reads shards in order. ``counter`` names the run's QualityCounter actor that books
    seen and skipped samples; ``resume_filter_name`` the run's ResumeFilter, which tells a
    resumed epoch what it already trained on, and the epoch.

    ``crop_seed`` (the run's seed) marks the training split: only there does
    ``data.crop=random_resized`` apply; without it (evaluation) every crop is the centre one.
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
    dataset = raw.map_batches(
        preprocess_batch,
        batch_size=None,  # whole read blocks: lets Ray fuse read + preprocess into one task
        batch_format="numpy",
        # The data section itself travels (pickled) to the tasks: one source of the sample
        # rules for training, evaluation, `data inspect` and reports.
        fn_kwargs={"cfg": cfg, "counter": counter, "crop_seed": crop_seed},
    )
    # Ray Data's per-operator reservation held our one fused read+preprocess operator to one
    # task at a time at the start of every pass (every epoch) on 2 CPUs, until its estimates
    # settled: measured, 228 -> 297 samples/s at 2 CPUs (benchmarks/data_throughput.py). With
    # one operator there is nothing to reserve against; the object store stays capped, by
    # Ray's no-reservation limit (a quarter of it), so a slow trainer still backpressures.
    dataset.context.op_resource_reservation_enabled = False
    return dataset


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A CPU tensor over ``array``'s own memory: no copy, even where that memory is read-only.

    Why the arrays are read-only: Ray stores our batches as Arrow blocks and hands them to
    ``iter_torch_batches`` through ``pyarrow.Array.to_numpy()``, zero-copy views of immutable
    Arrow buffers (object-store memory). numpy marks them read-only and will not let them be
    marked writable (``setflags(write=True)`` refuses: the memory is not the array's). torch has
    no read-only tensors, so its zero-copy routes (``from_numpy``, ``as_tensor``, ``frombuffer``)
    warn once per process that writing through the tensor would be undefined (``from_dlpack``
    is silent only on recent numpy; older numpy, which pyproject allows, refuses to export).

    Why no copy: nothing writes these tensors in place. The training loop and the evaluation
    only call ``.to(device)`` (the same tensor on CPU, a fresh one on a GPU), and the model only
    reads them (``masked_fill``, ``.bool()``, ``.to(float)`` all make new tensors);
    tests/unit/test_collate.py runs a training step and checks their version counters stay 0.
    A copy would cost a memcpy per batch (9.6 MB of images at the base preset) to guard
    against a write that does not happen. So the warning is answered here, for that one message
    only (Ray's own default collation suppresses it the same way), and code that ever needs to
    write into a batch tensor must ``clone()`` it first.
    """
    if array.flags.writeable:
        return torch.from_numpy(array)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=NOT_WRITABLE_WARNING, category=UserWarning)
        return torch.from_numpy(array)


class CollateBatch(NumpyBatchCollateFn):
    """numpy batch -> torch tensors, keeping sample keys and class labels as lists of str.

    Keys travel with every batch so the trainer can log what it consumed (the data position of a
    checkpoint) without a second pass over the shards; Ray's default collation rejects strings.
    """

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        out: dict[str, Any] = {
            name: shared_tensor(batch[name]) for name in ("image", "input_ids", "attention_mask")
        }
        out["key"] = [str(key) for key in batch["key"]]
        out["url"] = [str(url) for url in batch["url"]]
        out["label"] = [str(label) for label in batch["label"]]
        return out


collate_batch = CollateBatch()
