from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpretrain.config import DataConfig
from mmpretrain.data.shards import ShardPatternError, expand_shards, iter_shard, write_shard
from mmpretrain.data.synth import SHAPES, write_synthetic_shards
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.data.transforms import decode_image


def test_synth_shards_have_the_img2dataset_layout(tmp_path: Path) -> None:
    paths = write_synthetic_shards(tmp_path, samples=10, shard_size=4, seed=1)
    assert [p.name for p in paths] == ["00000.tar", "00001.tar", "00002.tar"]
    with tarfile.open(paths[0]) as tar:
        names = tar.getnames()
    # Members of one key are adjacent, as read_webdataset requires.
    keys = [name.split(".")[0] for name in names]
    assert keys == sorted(keys) and len(names) == 4 * 4
    samples = dict(iter_shard(paths[0]))
    assert len(samples) == 4
    for key, members in samples.items():
        assert set(members) == {"jpg", "txt", "json", "cls"}
        meta = json.loads(members["json"])
        assert meta["key"] == key and meta["caption"] == members["txt"].decode()
        # The class label is the shape the caption names first (for zero-shot evaluation).
        label = members["cls"].decode()
        first_shape = next(word for word in meta["caption"].split() if word in SHAPES)
        assert label == first_shape
        with Image.open(io.BytesIO(members["jpg"])) as image:
            assert image.format == "JPEG" and image.size == (meta["width"], meta["height"])
    assert len(dict(iter_shard(paths[2]))) == 2


def _digest(paths: list[Path]) -> str:
    return hashlib.sha256(b"".join(p.read_bytes() for p in paths)).hexdigest()


def test_synth_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first = write_synthetic_shards(tmp_path / "a", samples=6, shard_size=3, seed=7)
    again = write_synthetic_shards(tmp_path / "b", samples=6, shard_size=3, seed=7)
    other = write_synthetic_shards(tmp_path / "c", samples=6, shard_size=3, seed=8)
    assert _digest(first) == _digest(again)
    assert _digest(first) != _digest(other)


def test_synth_captions_describe_the_image(tmp_path: Path) -> None:
    (path,) = write_synthetic_shards(tmp_path, samples=50, shard_size=50, seed=0)
    captions = [m["txt"].decode() for m in dict(iter_shard(path)).values()]
    assert all(
        any(
            c in caption
            for c in ("red", "green", "blue", "yellow", "purple", "orange", "black", "cyan")
        )
        for caption in captions
    )
    assert len(set(captions)) >= 48  # captions are rarely repeated


def test_expand_shards_accepts_folder_glob_brace_and_names_missing(tmp_path: Path) -> None:
    write_synthetic_shards(tmp_path, samples=6, shard_size=2, seed=0)
    names = ["00000.tar", "00001.tar", "00002.tar"]
    assert [Path(p).name for p in expand_shards(str(tmp_path))] == names
    assert [Path(p).name for p in expand_shards(f"{tmp_path}/*.tar")] == names
    assert [Path(p).name for p in expand_shards(f"{tmp_path}/{{00000..00001}}.tar")] == names[:2]
    with pytest.raises(ShardPatternError, match=r"00003\.tar.*from pattern .*does not exist"):
        expand_shards(f"{tmp_path}/{{00000..00007}}.tar")
    with pytest.raises(ShardPatternError, match=r"matches no shard"):
        expand_shards(f"{tmp_path}/*.zip")


def test_tokenizer_is_bert_style_and_loads_with_transformers(synth_data) -> None:
    from transformers import BertTokenizerFast

    tok = load_tokenizer(str(synth_data["tokenizer"]))
    ids, mask = tok.encode(["a large red circle at the top left", "red " * 100], max_len=16)
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int64
    assert ids[0, 0] == tok.cls_id and tok.sep_id in ids[0] and ids[0, -1] == tok.pad_id
    assert ids[1, 0] == tok.cls_id and ids[1, -1] == tok.sep_id and mask[1].all()
    hf = BertTokenizerFast.from_pretrained(str(synth_data["tokenizer"]))
    expected = hf("a large red circle at the top left")["input_ids"]
    assert ids[0, : len(expected)].tolist() == expected


def test_vocab_only_bert_folder_loads_like_a_saved_bert_base(synth_data, tmp_path) -> None:
    # A saved bert-base-uncased may carry only vocab.txt + tokenizer_config.json.
    for name in ("vocab.txt", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((synth_data["tokenizer"] / name).read_bytes())
    full = load_tokenizer(str(synth_data["tokenizer"]))
    vocab_only = load_tokenizer(str(tmp_path))
    caption = ["two shapes: a small cyan ring on the left and a large black cross at the top"]
    assert (vocab_only.encode(caption, 24)[0] == full.encode(caption, 24)[0]).all()
    assert (vocab_only.mask_id, vocab_only.pad_id) == (full.mask_id, full.pad_id)


def test_tokenizer_folder_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not a tokenizer folder"):
        load_tokenizer(str(tmp_path))


def test_decode_crops_to_a_uint8_square() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (300, 120), (255, 0, 0)).save(buffer, format="PNG")
    image = decode_image(buffer.getvalue(), DataConfig(image_size=64))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[..., 0] > 250).all()


def test_write_shard_keeps_member_order(tmp_path: Path) -> None:
    path = tmp_path / "x.tar"
    write_shard(path, [("a", {"jpg": b"1", "txt": b"x"}), ("b", {"jpg": b"2", "txt": b"y"})])
    with tarfile.open(path) as tar:
        assert tar.getnames() == ["a.jpg", "a.txt", "b.jpg", "b.txt"]


def test_object_store_uris_go_through_pyarrow_file_systems(tmp_path: Path) -> None:
    # file:// takes the same pyarrow code path as s3:// and gs://, without a network.
    write_synthetic_shards(tmp_path, samples=6, shard_size=2, seed=0)
    uri = f"file://{tmp_path}"
    names = [f"{uri}/0000{i}.tar" for i in range(3)]
    assert expand_shards(uri) == names
    assert expand_shards(f"{uri}/*.tar") == names
    assert expand_shards(f"{uri}/{{00000..00001}}.tar") == names[:2]
    assert dict(iter_shard(names[1])) == dict(iter_shard(tmp_path / "00001.tar"))
    with pytest.raises(ShardPatternError, match=r"00009\.tar.*does not exist"):
        expand_shards(f"{uri}/00009.tar")
