"""data.crop: the random-resized crop of training, and the centre crop everything else keeps."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image, ImageOps

from mmpretrain.config import ConfigError, DataConfig, load_config
from mmpretrain.data.transforms import (
    CROP_RATIO,
    EPOCH_COLUMN,
    EXIF_ORIENTATION,
    crop_seed_for,
    decode_image,
    prepare_sample,
    preprocess_rows,
    random_resized_box,
)

RANDOM = DataConfig(image_size=64, crop="random_resized", crop_scale=[0.3, 0.6])


def gradient_jpeg(width: int, height: int, orientation: int = 1) -> bytes:
    """A JPEG whose every region looks different (two gradients and a stripe pattern)."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    stripes = 60 * (np.sin(x / 9.0) * np.cos(y / 13.0))
    pixels = np.stack([x + 0 * y, y + 0 * x, np.clip(128 + stripes, 0, 255)], axis=-1)
    image = Image.fromarray(pixels.astype(np.uint8))
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[EXIF_ORIENTATION] = orientation
    image.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def oracle(payload: bytes, box_fractions: tuple[float, ...], size: int) -> np.ndarray:
    """The crop without any shortcut: full decode, upright, crop, resize."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(payload)).convert("RGB"))
    w, h = image.size
    box = (
        box_fractions[0] * w,
        box_fractions[1] * h,
        box_fractions[2] * w,
        box_fractions[3] * h,
    )
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box))


@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 300), (1000, 90)])
def test_random_box_lies_inside_the_image_with_scale_and_aspect_in_range(size) -> None:
    width, height = size
    scale = (0.3, 0.6)
    fitted = 0
    for seed in range(200):
        left, top, right, bottom = random_resized_box(width, height, random.Random(seed), scale)
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        w, h = right - left, bottom - top
        share = w * h / (width * height)
        # Rounding to whole pixels moves the share and aspect by about a pixel's worth.
        slack = (w + h + 1) / (width * height)
        if scale[0] - slack <= share <= scale[1] + slack:
            fitted += 1
            assert CROP_RATIO[0] - 2 / min(w, h) <= w / h <= CROP_RATIO[1] + 2 / min(w, h)
    if width / height < 10:
        assert fitted == 200  # these shapes always fit within ten tries
    else:
        assert fitted == 0  # 1000 x 90 never fits: torchvision's fallback every time


def test_fallback_is_the_centred_image_clamped_to_the_aspect_range() -> None:
    # 30% of a 1000 x 10 image cannot have an aspect of at most 4/3: all ten tries fail.
    assert random_resized_box(1000, 10, random.Random(0), (0.3, 0.6)) == (493, 0, 506, 10)
    # A box of (almost) the whole area of a square image is the whole image.
    assert random_resized_box(5, 5, random.Random(0), (0.9999, 1.0)) == (0, 0, 5, 5)


def test_crop_seed_is_stable_and_differs_by_key_epoch_shard_and_seed() -> None:
    seed = crop_seed_for(7, 0, "/data/00000.tar", "k1")
    assert seed == crop_seed_for(7, 0, "/data/00000.tar", "k1")
    others = {
        crop_seed_for(7, 0, "/data/00000.tar", "k2"),
        crop_seed_for(7, 1, "/data/00000.tar", "k1"),
        crop_seed_for(7, 0, "/data/00001.tar", "k1"),
        crop_seed_for(8, 0, "/data/00000.tar", "k1"),
    }
    assert seed not in others and len(others) == 4


@pytest.mark.parametrize("orientation", [1, 6, 3])
def test_random_crop_decodes_reduced_yet_matches_the_full_decode(orientation: int) -> None:
    payload = gradient_jpeg(1200, 900, orientation)
    upright = (900, 1200) if orientation == 6 else (1200, 900)
    for seed in range(5):
        image = decode_image(payload, RANDOM, crop_seed=seed)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        left, top, right, bottom = random_resized_box(*upright, random.Random(seed), (0.3, 0.6))
        w, h = upright
        expected = oracle(payload, (left / w, top / h, right / w, bottom / h), 64)
        # draft decoded at 1/2 or 1/4: the box is still >= 64 px, so only resampling differs.
        assert np.abs(image.astype(int) - expected.astype(int)).mean() < 6


def test_random_crop_is_deterministic_per_seed_and_differs_between_seeds() -> None:
    payload = gradient_jpeg(800, 600)
    first = decode_image(payload, RANDOM, crop_seed=crop_seed_for(0, 0, "s.tar", "a"))
    again = decode_image(payload, RANDOM, crop_seed=crop_seed_for(0, 0, "s.tar", "a"))
    other = decode_image(payload, RANDOM, crop_seed=crop_seed_for(0, 0, "s.tar", "b"))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_centre_crop_is_unchanged_by_the_new_path() -> None:
    """data.crop=center decodes exactly as before: draft to (size, size), centre square."""
    payload = gradient_jpeg(1000, 700, orientation=6)
    with Image.open(io.BytesIO(payload)) as image:
        image.draft("RGB", (64, 64))
        image = ImageOps.exif_transpose(image.convert("RGB"))
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        before = np.asarray(
            image.resize(
                (64, 64), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
            )
        )
    assert np.array_equal(decode_image(payload, DataConfig(image_size=64)), before)
    # Without a crop seed even data.crop=random_resized is the centre crop (evaluation).
    assert np.array_equal(decode_image(payload, RANDOM), before)
    # With a seed but data.crop=center: the centre crop too.
    assert np.array_equal(decode_image(payload, DataConfig(image_size=64), crop_seed=3), before)


def rows(payloads: list[bytes], epoch: int) -> dict[str, np.ndarray]:
    keys = [f"k{i}" for i in range(len(payloads))]
    return {
        "__key__": np.array(keys),
        "__url__": np.array(["/shards/00000.tar"] * len(keys)),
        EPOCH_COLUMN: np.array([epoch] * len(keys)),
        "jpg": np.array(payloads, dtype=object),
        "txt": np.array([b"a red square"] * len(keys), dtype=object),
    }


def test_preprocess_rows_crops_randomly_only_with_a_seed_and_reseeds_per_epoch(
    synth_data,
) -> None:
    cfg = DataConfig(
        image_size=64,
        crop="random_resized",
        crop_scale=[0.3, 0.6],
        tokenizer=str(synth_data["tokenizer"]),
    )
    payload = gradient_jpeg(800, 600)
    payloads = [payload] * 3
    centre, counts = preprocess_rows(rows(payloads, 0), cfg)  # evaluation: no seed
    assert counts["seen"] == 3 and centre["image"].shape == (3, 64, 64, 3)
    assert all(np.array_equal(centre["image"][0], img) for img in centre["image"])
    epoch0, _ = preprocess_rows(rows(payloads, 0), cfg, crop_seed=1)
    again, _ = preprocess_rows(rows(payloads, 0), cfg, crop_seed=1)
    epoch1, _ = preprocess_rows(rows(payloads, 1), cfg, crop_seed=1)
    assert epoch0["image"].dtype == np.uint8 and epoch0["image"].shape == (3, 64, 64, 3)
    assert np.array_equal(epoch0["image"], again["image"])  # a resumed epoch sees the same
    # The same picture under different keys gets different boxes, and again the next epoch.
    assert not np.array_equal(epoch0["image"][0], epoch0["image"][1])
    assert not np.array_equal(epoch0["image"][0], epoch1["image"][0])
    assert not np.array_equal(epoch0["image"][0], centre["image"][0])
    # inspect and the attention report go through prepare_sample without a seed: centre.
    image, _ = prepare_sample({"jpg": payload, "txt": b"a red square"}, cfg)
    assert np.array_equal(image, centre["image"][0])


def test_crop_config_errors_name_the_key_and_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match=r"data\.crop: got 'random'.*'center', 'random_resized'"):
        DataConfig(crop="random")
    for bad in ([0.5], [0.0, 1.0], [0.8, 0.5], [0.5, 1.5], ["a", "b"]):
        with pytest.raises(ConfigError, match=r"data\.crop_scale: must be \[low, high\]"):
            DataConfig(crop_scale=bad)
    cfg = load_config("tiny", ["data.crop=random_resized", "data.crop_scale=[0.5,1.0]"])
    assert (cfg.data.crop, cfg.data.crop_scale) == ("random_resized", [0.5, 1.0])
    assert DataConfig().crop == "center" and DataConfig().crop_scale == [0.9, 1.0]
    assert math.isclose(CROP_RATIO[0] * CROP_RATIO[1], 1.0)
