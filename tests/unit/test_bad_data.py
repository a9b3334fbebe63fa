"""Every kind of bad sample is dropped and counted by reason; odd images come out right."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmpretrain.config import DataConfig
from mmpretrain.data.shards import expand_shards, iter_shard
from mmpretrain.data.transforms import (
    SkipReason,
    UnusableSampleError,
    decode_image,
    preprocess_rows,
)
from tests.badshards import BAD_REASONS, BLUE, RED, WHITE, odd_images, write_mixed_shards


def rows_of(path: str) -> dict[str, np.ndarray]:
    """A shard as read_webdataset(decoder=None) hands it over: one column per member kind."""
    samples = dict(iter_shard(path))
    columns = sorted({ext for members in samples.values() for ext in members})
    rows: dict[str, np.ndarray] = {"__key__": np.array(list(samples))}
    for ext in columns:
        rows[ext] = np.array([m.get(ext) for m in samples.values()], dtype=object)
    return rows


def close_to(pixel: np.ndarray, colour: tuple[int, int, int], tolerance: int = 40) -> bool:
    return bool(np.abs(pixel.astype(int) - np.array(colour)).max() <= tolerance)


def test_mixed_shards_keep_exactly_the_usable_keys_and_count_the_rest(
    synth_data, tmp_path: Path
) -> None:
    kinds = write_mixed_shards(tmp_path, good=10)
    cfg = DataConfig(image_size=32, max_text_len=16, tokenizer=str(synth_data["tokenizer"]))
    kept: list[str] = []
    counts: Counter = Counter()
    paths = expand_shards(str(tmp_path))
    assert [Path(p).name for p in paths] == ["00000.tar", "00001.tar.gz"]
    for path in paths:
        batch, batch_counts = preprocess_rows(rows_of(path), cfg)
        assert batch["image"].shape[1:] == (32, 32, 3) and batch["image"].dtype == np.uint8
        assert len(batch["key"]) == len(batch["input_ids"]) == len(batch["image"])
        kept.extend(batch["key"])
        counts += batch_counts
    assert sorted(kept) == sorted(kinds["good"] + kinds["odd"])
    expected = Counter(f"skipped_{reason}" for reason in BAD_REASONS.values())
    expected["seen"] = len(kinds["good"]) + len(kinds["odd"]) + len(kinds["bad"])
    assert counts == expected


@pytest.mark.parametrize(
    ("key", "top", "bottom"),
    [
        ("odd-cmyk", RED, RED),
        ("odd-palette", RED, WHITE),  # transparent palette entries become white
        ("odd-grey", (128, 128, 128), (128, 128, 128)),
        (
            "odd-16bit",
            WHITE,
            WHITE,
        ),  # 16-bit full scale maps to 8-bit full scale, not clipped noise
        ("odd-rgba", RED, WHITE),  # alpha composited on white, not on black
        ("odd-exif", RED, BLUE),  # EXIF orientation 6 turns the stored left half to the top
    ],
)
def test_odd_images_decode_to_the_right_rgb(key: str, top, bottom) -> None:
    _, payload = odd_images()[key]
    image = decode_image(payload, DataConfig(image_size=32))
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert close_to(image[2, 16], top), image[2, 16]
    assert close_to(image[29, 16], bottom), image[29, 16]


def test_caption_from_json_field_and_from_class_label(synth_data) -> None:
    _, payload = odd_images()["odd-grey"]
    rows = {
        "__key__": np.array(["a", "b", "c"]),
        "png": np.array([payload] * 3, dtype=object),
        "json": np.array([b'{"text": "grey square"}', b'{"other": 1}', b"{broken"], dtype=object),
        "cls": np.array([b"1", b"0", b"7"], dtype=object),
    }
    tokenizer = str(synth_data["tokenizer"])
    batch, counts = preprocess_rows(
        rows,
        DataConfig(
            image_size=32,
            max_text_len=16,
            tokenizer=tokenizer,
            caption_source="json",
            caption_json_field="text",
        ),
    )
    assert list(batch["key"]) == ["a"] and counts["skipped_missing_caption"] == 2
    cfg = DataConfig(
        image_size=32,
        max_text_len=16,
        tokenizer=tokenizer,
        caption_source="cls",
        class_names=["cat", "dog"],
    )
    batch, counts = preprocess_rows(rows, cfg)
    assert list(batch["key"]) == ["a", "b"] and counts["skipped_missing_caption"] == 1


def test_size_limits_are_read_from_the_data_config() -> None:
    # One image, three configs: the limits are the config's, not defaults hidden in decode.
    buffer = io.BytesIO()
    Image.new("RGB", (64, 40), RED).save(buffer, format="PNG")
    payload = buffer.getvalue()
    assert decode_image(payload, DataConfig(image_size=32)).shape == (32, 32, 3)
    with pytest.raises(UnusableSampleError) as small:
        decode_image(payload, DataConfig(image_size=32, min_image_side=41))
    assert small.value.reason is SkipReason.IMAGE_TOO_SMALL
    with pytest.raises(UnusableSampleError) as large:
        decode_image(payload, DataConfig(image_size=32, max_image_pixels=64 * 40 - 1))
    assert large.value.reason is SkipReason.IMAGE_TOO_LARGE
