"""A WebDataset reader for Ray Data that survives damaged shards.

Ray's ``read_webdataset`` fails its read task, and so the run, on a truncated or corrupt tar.
Web-scale corpora always hold a few; here the samples before the damage are kept, and the
damage becomes one marker row that the preprocessing step counts as ``truncated_tar``. Members
arrive as raw bytes, as with ``read_webdataset(decoder=None)``. With a resume filter named, a
shard the resumed epoch finished is not read, and keys it consumed are left out (see
``resume_filter.py``); every row carries the pass's epoch, which seeds the random crops.
"""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from ray.data.datasource import FileBasedDatasource

from mmpretrain.data import resume_filter
from mmpretrain.data.shards import iter_tar_samples
from mmpretrain.data.transforms import EPOCH_COLUMN

DAMAGE_COLUMN = "__damage__"
ROWS_PER_BLOCK = 64  # also the preprocessing batch: the read and map tasks are fused


class ResilientWebDatasetSource(FileBasedDatasource):
    _FILE_EXTENSIONS = ["tar", "tgz", "gz"]  # noqa: RUF012 (Ray's class attribute)

    def __init__(
        self,
        paths: list[str],
        *,
        member_suffixes: frozenset[str],
        resume_filter_name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(paths, **kwargs)
        self._member_suffixes = member_suffixes
        self._resume_filter_name = resume_filter_name

    def _read_stream(self, stream: Any, path: str) -> Iterator[pd.DataFrame]:
        consumed: frozenset[str] = frozenset()
        epoch = 0  # without a run's filter (evaluation, tools) every pass is the first
        if self._resume_filter_name:
            finished, consumed, epoch = resume_filter.skips_for(self._resume_filter_name, path)
            if finished:
                return
        rows: list[dict[str, Any]] = []
        try:
            for key, members in iter_tar_samples(stream):
                if key in consumed:
                    continue
                row: dict[str, Any] = {"__key__": key, "__url__": path, EPOCH_COLUMN: epoch}
                row.update(
                    (ext, payload)
                    for ext, payload in members.items()
                    if ext.lower() in self._member_suffixes
                )
                rows.append(row)
                if len(rows) >= ROWS_PER_BLOCK:
                    yield pd.DataFrame(rows)
                    rows = []
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            rows.append(
                {
                    "__key__": f"{Path(path).name}#damaged",
                    "__url__": path,
                    EPOCH_COLUMN: epoch,
                    DAMAGE_COLUMN: str(exc),
                }
            )
        if rows:
            yield pd.DataFrame(rows)
