"""Local image-caption collections -> img2dataset-compatible shards.

Reads a table (CSV, TSV, Parquet, JSONL) of local image paths and captions, or a folder of
images with same-named ``.txt`` captions, and writes what img2dataset writes: ``NNNNN.tar``
holding ``KEY.jpg``/``KEY.txt``/``KEY.json``, a ``NNNNN.parquet`` of every row's metadata
(failures included, with the error) and ``NNNNN_stats.json``. Downloading is img2dataset's job.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from mmpretrain.data.shards import write_shard
from mmpretrain.data.transforms import flatten_to_rgb

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop")
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet", ".jsonl")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
REMOTE_PREFIXES = ("http://", "https://", "s3://", "gs://", "ftp://")


class ConvertError(ValueError):
    """The input cannot be converted as asked; the message says what to change."""


@dataclass(frozen=True)
class ConvertOptions:
    shard_size: int = 10_000
    resize_mode: str = "no"
    image_size: int = 256
    jpeg_quality: int = 95
    processes: int = 1
    image_column: str = "image"
    caption_column: str = "caption"

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ConvertError(f"--resize-mode: got {self.resize_mode!r}; allowed {RESIZE_MODES}")
        if self.shard_size < 1 or self.image_size < 1 or self.processes < 1:
            raise ConvertError("--shard-size, --image-size and --processes must be >= 1")
        if not 1 <= self.jpeg_quality <= 100:
            raise ConvertError("--jpeg-quality must be in [1, 100]")


@dataclass(frozen=True)
class SourceRow:
    image: str
    caption: str


def _read_table(path: Path, options: ConvertOptions) -> list[SourceRow]:
    import pyarrow.csv
    import pyarrow.json
    import pyarrow.parquet

    if path.suffix == ".parquet":
        table = pyarrow.parquet.read_table(path)
    elif path.suffix == ".jsonl":
        table = pyarrow.json.read_json(path)
    else:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        table = pyarrow.csv.read_csv(
            path, parse_options=pyarrow.csv.ParseOptions(delimiter=delimiter)
        )
    missing = [
        c for c in (options.image_column, options.caption_column) if c not in table.schema.names
    ]
    if missing:
        raise ConvertError(
            f"{path}: no column {missing[0]!r}; columns are {table.schema.names}"
            " (choose them with --image-column and --caption-column)"
        )
    images = table.column(options.image_column).to_pylist()
    captions = table.column(options.caption_column).to_pylist()
    rows = []
    for image, caption in zip(images, captions, strict=True):
        image = "" if image is None else str(image)
        if image.startswith(REMOTE_PREFIXES):
            raise ConvertError(
                f"{path}: {image!r} is a URL; mmpretrain converts local files only. Download "
                "URL lists with img2dataset (it writes the same shard layout), then train on them"
            )
        if image and not Path(image).is_absolute():
            image = str(path.parent / image)  # relative paths are relative to the table
        rows.append(SourceRow(image, "" if caption is None else str(caption)))
    return rows


def _read_folder(folder: Path) -> list[SourceRow]:
    rows = []
    for image in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        caption_file = image.with_suffix(".txt")
        caption = caption_file.read_text(errors="replace") if caption_file.is_file() else ""
        rows.append(SourceRow(str(image), caption))
    return rows


def read_source(source: str | Path, options: ConvertOptions) -> list[SourceRow]:
    text = str(source)
    if text.startswith(REMOTE_PREFIXES):
        raise ConvertError(
            f"{text} is remote; download with img2dataset (same shard layout), or copy it locally"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        rows = _read_folder(path)
    elif path.is_file() and path.suffix.lower() in TABLE_SUFFIXES:
        rows = _read_table(path, options)
    else:
        raise ConvertError(
            f"{text}: expected a folder of images or a table ({', '.join(TABLE_SUFFIXES)})"
        )
    if not rows:
        raise ConvertError(f"{text}: no images found")
    return rows


def resize(image: Image.Image, mode: str, size: int) -> Image.Image:
    """img2dataset's resize modes (``border`` aside)."""
    if mode == "no":
        return image
    width, height = image.size
    side = max(width, height) if mode == "keep_ratio_largest" else min(width, height)
    scale = size / side
    resized = image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.LANCZOS
    )
    if mode != "center_crop":
        return resized
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def _convert_row(row: SourceRow, key: str, options: ConvertOptions) -> tuple[dict, bytes | None]:
    meta: dict[str, Any] = {
        "key": key,
        "caption": row.caption.strip(),
        "source": row.image,
        "status": "success",
        "error_message": None,
        "width": None,
        "height": None,
        "original_width": None,
        "original_height": None,
    }
    if not meta["caption"]:
        meta.update(status="failed_to_read_caption", error_message="missing or empty caption")
        return meta, None
    try:
        with Image.open(row.image) as source:
            original = source.size
            image = flatten_to_rgb(ImageOps.exif_transpose(source))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        meta.update(status="failed_to_read_image", error_message=str(exc))
        return meta, None
    image = resize(image, options.resize_mode, options.image_size)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=options.jpeg_quality)
    meta.update(
        width=image.width,
        height=image.height,
        original_width=original[0],
        original_height=original[1],
    )
    return meta, buffer.getvalue()


def _shard_paths(out: Path, shard_index: int) -> tuple[Path, Path, Path]:
    stem = f"{shard_index:05d}"
    return out / f"{stem}.tar", out / f"{stem}.parquet", out / f"{stem}_stats.json"


def _convert_shard(job: tuple[int, list[SourceRow], Path, ConvertOptions, int]) -> dict:
    """Writes one shard; the stats file goes last, so its presence means the shard is whole."""
    import pyarrow
    import pyarrow.parquet

    shard_index, rows, out, options, key_digits = job
    tar_path, parquet_path, stats_path = _shard_paths(out, shard_index)
    metas, members = [], []
    for offset, row in enumerate(rows):
        key = f"{shard_index:05d}{offset:0{key_digits}d}"
        meta, jpeg = _convert_row(row, key, options)
        metas.append(meta)
        if jpeg is not None:
            sidecar = {k: v for k, v in meta.items() if k != "error_message"}
            members.append(
                (
                    key,
                    {
                        "jpg": jpeg,
                        "txt": meta["caption"].encode(),
                        "json": json.dumps(sidecar).encode(),
                    },
                )
            )
    partial = tar_path.with_suffix(".tar.partial")
    write_shard(partial, members)
    os.replace(partial, tar_path)
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(metas), parquet_path)
    statuses = Counter(meta["status"] for meta in metas)
    stats = {
        "count": len(metas),
        "successes": statuses.pop("success", 0),
        "failed": sum(statuses.values()),
        "failures_by_reason": dict(sorted(statuses.items())),
        "options": asdict(options),
    }
    stats_path.write_text(json.dumps(stats, indent=2))
    return stats


def convert(source: str | Path, out_dir: str | Path, options: ConvertOptions) -> dict[str, Any]:
    """Converts ``source`` into shards under ``out_dir``; complete shards are not redone."""
    rows = read_source(source, options)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key_digits = len(str(options.shard_size - 1))
    jobs = []
    skipped = 0
    for shard_index, start in enumerate(range(0, len(rows), options.shard_size)):
        if _shard_paths(out, shard_index)[2].is_file():
            skipped += 1
            continue
        jobs.append(
            (shard_index, rows[start : start + options.shard_size], out, options, key_digits)
        )
    results = _run(jobs, options.processes)
    totals: Counter = Counter()
    for stats in results:
        totals.update(count=stats["count"], successes=stats["successes"], failed=stats["failed"])
        totals.update(stats["failures_by_reason"])
    return {"shards_written": len(jobs), "shards_already_complete": skipped, **totals}


def _run(jobs: Sequence[tuple], processes: int) -> list[dict]:
    from tqdm import tqdm

    bar = tqdm(total=len(jobs), unit="shard", desc="convert", disable=not sys.stderr.isatty())
    results = []
    if processes == 1 or len(jobs) <= 1:
        for job in jobs:
            results.append(_convert_shard(job))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(processes) as pool:
            for stats in pool.imap_unordered(_convert_shard, jobs):
                results.append(stats)
                bar.update()
    bar.close()
    return results
