"""`mmpretrain data convert`: local images + captions -> shards that read back and train."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.parquet
import pytest
from PIL import Image

from mmpretrain.cli import main
from mmpretrain.config import DataConfig
from mmpretrain.data.convert import ConvertError, ConvertOptions, convert
from mmpretrain.data.shards import expand_shards, iter_shard
from mmpretrain.data.transforms import preprocess_rows


def _image(path: Path, size: tuple[int, int], colour=(200, 30, 30)) -> None:
    Image.new("RGB", size, colour).save(path)


def test_folder_converts_to_img2dataset_shards_with_sidecars(tmp_path: Path) -> None:
    source = tmp_path / "photos"
    source.mkdir()
    for index in range(5):
        _image(source / f"img{index}.png", (120, 80))
        (source / f"img{index}.txt").write_text(f"a red photo number {index}")
    _image(source / "uncaptioned.png", (50, 50))
    (source / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (source / "broken.txt").write_text("a broken file")
    out = tmp_path / "shards"
    summary = convert(
        source, out, ConvertOptions(shard_size=4, resize_mode="center_crop", image_size=64)
    )
    assert summary["count"] == 7 and summary["successes"] == 5 and summary["failed"] == 2
    assert summary["failed_to_read_image"] == 1 and summary["failed_to_read_caption"] == 1
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet",
        "00000.tar",
        "00000_stats.json",
        "00001.parquet",
        "00001.tar",
        "00001_stats.json",
    ]
    samples = {k: v for path in expand_shards(str(out)) for k, v in dict(iter_shard(path)).items()}
    assert len(samples) == 5
    for key, members in samples.items():
        assert set(members) == {"jpg", "txt", "json"}
        meta = json.loads(members["json"])
        assert meta["key"] == key and len(key) == 6  # 5-digit shard + 1-digit index (size 4)
        assert (meta["width"], meta["height"]) == (64, 64)
        assert (meta["original_width"], meta["original_height"]) == (120, 80)
        assert meta["caption"] == members["txt"].decode()
    table = pyarrow.parquet.read_table(out / "00000.parquet").to_pylist()
    assert len(table) == 4 and {row["status"] for row in table} >= {"success"}
    stats = json.loads((out / "00001_stats.json").read_text())
    assert stats["count"] == 3 and stats["successes"] + stats["failed"] == 3


def test_parquet_table_with_relative_paths_and_resize_modes(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    for index in range(3):
        _image(tmp_path / "img" / f"{index}.jpg", (300, 100))
    table = pyarrow.table(
        {"path": [f"img/{i}.jpg" for i in range(3)], "text": [f"caption {i}" for i in range(3)]}
    )
    pyarrow.parquet.write_table(table, tmp_path / "pairs.parquet")
    sizes = {}
    for mode in ("no", "keep_ratio", "keep_ratio_largest", "center_crop"):
        out = tmp_path / mode
        convert(
            tmp_path / "pairs.parquet",
            out,
            ConvertOptions(
                resize_mode=mode, image_size=50, image_column="path", caption_column="text"
            ),
        )
        (members,) = list(dict(iter_shard(out / "00000.tar")).values())[:1]
        meta = json.loads(members["json"])
        sizes[mode] = (meta["width"], meta["height"])
    assert sizes == {
        "no": (300, 100),
        "keep_ratio": (150, 50),
        "keep_ratio_largest": (50, 17),
        "center_crop": (50, 50),
    }


def test_rerun_skips_complete_shards_and_keys_are_deterministic(tmp_path: Path) -> None:
    rows = tmp_path / "pairs.csv"
    for index in range(6):
        _image(tmp_path / f"{index}.png", (40, 40))
    rows.write_text("image,caption\n" + "".join(f"{i}.png,picture {i}\n" for i in range(6)))
    first = convert(rows, tmp_path / "a", ConvertOptions(shard_size=2, processes=2))
    assert first["shards_written"] == 3
    again = convert(rows, tmp_path / "a", ConvertOptions(shard_size=2))
    assert again["shards_written"] == 0 and again["shards_already_complete"] == 3
    convert(rows, tmp_path / "b", ConvertOptions(shard_size=2))
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_converted_shards_feed_the_training_preprocess(tmp_path: Path, synth_data) -> None:
    for index in range(4):
        _image(tmp_path / f"{index}.png", (90, 60))
        (tmp_path / f"{index}.txt").write_text("a red square in the center")
    convert(tmp_path, tmp_path / "out", ConvertOptions())
    samples = dict(iter_shard(tmp_path / "out" / "00000.tar"))
    rows = {
        "__key__": np.array(list(samples)),
        "jpg": np.array([m["jpg"] for m in samples.values()], dtype=object),
        "txt": np.array([m["txt"] for m in samples.values()], dtype=object),
    }
    batch, counts = preprocess_rows(
        rows, DataConfig(image_size=32, max_text_len=12, tokenizer=str(synth_data["tokenizer"]))
    )
    assert len(batch["key"]) == 4 and counts == {"seen": 4}


def test_urls_are_refused_with_a_pointer_to_img2dataset(tmp_path: Path, capsys) -> None:
    rows = tmp_path / "urls.tsv"
    rows.write_text("image\tcaption\nhttps://example.com/a.jpg\ta cat\n")
    with pytest.raises(ConvertError, match="img2dataset"):
        convert(rows, tmp_path / "out", ConvertOptions())
    assert main(["data", "convert", str(rows), "--out", str(tmp_path / "out")]) == 2
    assert "img2dataset" in capsys.readouterr().err
    with pytest.raises(ConvertError, match="no column 'image'"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"url": "x.jpg", "caption": "y"}\n')
        convert(bad, tmp_path / "out", ConvertOptions())
