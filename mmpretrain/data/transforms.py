"""Per-sample preprocessing run inside Ray Data tasks: decode, crop, tokenize.

Images leave here as uint8 HWC arrays (a quarter of float32's bytes through the object store);
normalisation happens on the training device. A sample that cannot be used is dropped and
counted by reason (``SkipReason``); it never raises out of a batch, so one bad JPEG in a corpus of
millions cannot fail a block or the run.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mmpretrain.config import DataConfig
from mmpretrain.data.tokenizer import load_tokenizer

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
EXIF_ORIENTATION = 0x0112


class SkipReason(str, Enum):
    """Why a sample was dropped; the values are metric label values."""

    NO_IMAGE = "no_image"
    EMPTY_MEMBER = "empty_member"
    CORRUPT_IMAGE = "corrupt_image"
    IMAGE_TOO_SMALL = "image_too_small"
    IMAGE_TOO_LARGE = "image_too_large"
    MISSING_CAPTION = "missing_caption"
    EMPTY_CAPTION = "empty_caption"
    CAPTION_NOT_UTF8 = "caption_not_utf8"
    TRUNCATED_TAR = "truncated_tar"  # the sample a damaged shard was cut in


class UnusableSampleError(ValueError):
    def __init__(self, reason: SkipReason, detail: str = ""):
        super().__init__(f"{reason.value}: {detail}" if detail else reason.value)
        self.reason = reason


def flatten_to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB: transparency composited on white, 16-bit scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        pixels = np.asarray(image, dtype=np.int64)
        if image.mode == "I":  # 32-bit ints: PNG 16-bit greyscale often decodes as "I"
            pixels = np.clip(pixels, 0, 65535)
        image = Image.fromarray((pixels >> 8).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def decode_image(payload: bytes, cfg: DataConfig) -> np.ndarray:
    """Decodes image bytes to a ``data.image_size`` square RGB uint8 centre crop.

    Raises UnusableSampleError with the reason when the bytes cannot make a training image
    (the size limits are ``data.min_image_side`` and ``data.max_image_pixels``: read from the
    config itself, so training, ``data inspect`` and reports can never disagree on them).

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing. ``draft`` lets libjpeg decode at a reduced scale when the source is much
    larger than the crop, which is most of the decode cost for web images. EXIF orientation is
    applied, as a camera's viewer would.
    """
    if not payload:
        raise UnusableSampleError(SkipReason.EMPTY_MEMBER)
    size = cfg.image_size
    try:
        with Image.open(io.BytesIO(payload)) as image:
            width, height = image.size
            if width * height > cfg.max_image_pixels:
                raise UnusableSampleError(SkipReason.IMAGE_TOO_LARGE, f"{width}x{height}")
            if min(width, height) < cfg.min_image_side:
                raise UnusableSampleError(SkipReason.IMAGE_TOO_SMALL, f"{width}x{height}")
            image.draft("RGB", (size, size))
            image.load()  # decode now, inside the try: truncated data fails here
            if image.getexif().get(EXIF_ORIENTATION, 1) != 1:
                image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = flatten_to_rgb(image)
    except UnusableSampleError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own header check, past 2x its limit
        raise UnusableSampleError(SkipReason.IMAGE_TOO_LARGE, str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnusableSampleError(SkipReason.CORRUPT_IMAGE, str(exc)) from exc
    return centre_square(image, size)


def centre_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> ``size`` x ``size`` uint8 centre crop, as training and inference see it.

    Centre square first, then one resize of just that box: the same picture as "resize the
    shorter side, then centre crop", without resampling pixels that the crop throws away.
    """
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    image = image.resize(
        (size, size), Image.Resampling.BICUBIC, box=(left, top, left + side, top + side)
    )
    return np.asarray(image, dtype=np.uint8)


def _text(payload: Any) -> str:
    try:
        return bytes(payload).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UnusableSampleError(SkipReason.CAPTION_NOT_UTF8) from exc


def extract_caption(members: dict[str, Any], cfg: DataConfig) -> str:
    """The caption from ``txt``, a ``json`` field, or a ``cls`` label through the template."""
    if cfg.caption_source == "txt":
        raw = members.get("txt")
        if raw is None:
            raise UnusableSampleError(SkipReason.MISSING_CAPTION)
        caption = _text(raw)
    elif cfg.caption_source == "json":
        raw = members.get("json")
        if raw is None:
            raise UnusableSampleError(SkipReason.MISSING_CAPTION)
        try:
            value = json.loads(_text(raw)).get(cfg.caption_json_field)
        except (json.JSONDecodeError, AttributeError) as exc:
            raise UnusableSampleError(SkipReason.MISSING_CAPTION, "unreadable json") from exc
        if value is None:
            raise UnusableSampleError(SkipReason.MISSING_CAPTION)
        caption = str(value)
    else:
        raw = members.get("cls")
        if raw is None:
            raise UnusableSampleError(SkipReason.MISSING_CAPTION)
        label = _text(raw).strip()
        if label.isdigit() and cfg.class_names:
            index = int(label)
            if index >= len(cfg.class_names):
                raise UnusableSampleError(SkipReason.MISSING_CAPTION, f"class {index} has no name")
            label = cfg.class_names[index]
        caption = cfg.label_template.format(label=label) if label else ""
    caption = caption.strip()
    if not caption:
        raise UnusableSampleError(SkipReason.EMPTY_CAPTION)
    return caption


def prepare_sample(members: dict[str, Any], cfg: DataConfig) -> tuple[np.ndarray, str]:
    """One sample's members (lower-cased extension -> bytes) -> (image, caption)."""
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if members.get(ext) is not None), None)
    if image_ext is None:
        raise UnusableSampleError(SkipReason.NO_IMAGE)
    caption = extract_caption(members, cfg)
    image = decode_image(members[image_ext], cfg)
    return image, caption


def class_label(members: dict[str, Any]) -> str:
    """The ``cls`` member as text ("" when absent or unreadable): zero-shot evaluation's label.

    Kept whatever the caption source, so a captioned set that also carries labels can be
    evaluated zero-shot; an unreadable label costs the label, not the sample.
    """
    raw = members.get("cls")
    if raw is None:
        return ""
    try:
        return bytes(raw).decode("utf-8").strip()
    except UnicodeDecodeError:
        return ""


def _as_bytes(value: Any) -> bytes | None:
    """A member's bytes, or None where this sample lacks it (Ray fills gaps with None or NaN)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    return None


def preprocess_rows(
    batch: dict[str, np.ndarray], cfg: DataConfig
) -> tuple[dict[str, np.ndarray], Counter]:
    """Raw WebDataset rows -> training-ready arrays, plus counts of seen and skipped samples."""
    # "JPG" and "jpg" members of different samples arrive as separate columns: merge by case.
    columns: dict[str, list[str]] = {}
    for name in batch:
        if not name.startswith("__"):
            columns.setdefault(name.lower(), []).append(name)
    keys = [str(k) for k in batch["__key__"]]
    # Rows built by hand (tests, tools) may lack the shard; Ray's readers always set it.
    urls = [str(u) for u in batch.get("__url__", [""] * len(keys))]
    counts: Counter = Counter(seen=len(keys))
    images: list[np.ndarray] = []
    captions: list[str] = []
    labels: list[str] = []
    kept: list[str] = []
    kept_urls: list[str] = []
    damage = batch.get("__damage__")
    for index, key in enumerate(keys):
        if damage is not None and isinstance(damage[index], str):
            counts[f"skipped_{SkipReason.TRUNCATED_TAR.value}"] += 1
            continue
        members = {
            lower: next((v for n in names if (v := _as_bytes(batch[n][index])) is not None), None)
            for lower, names in columns.items()
        }
        try:
            image, caption = prepare_sample(members, cfg)
        except UnusableSampleError as bad:
            counts[f"skipped_{bad.reason.value}"] += 1
            continue
        images.append(image)
        captions.append(caption)
        labels.append(class_label(members))
        kept.append(key)
        kept_urls.append(urls[index])

    size, length = cfg.image_size, cfg.max_text_len
    if captions:
        input_ids, attention_mask = load_tokenizer(cfg.tokenizer).encode(captions, length)
        image_array = np.stack(images)
    else:
        input_ids = np.zeros((0, length), dtype=np.int64)
        attention_mask = np.zeros((0, length), dtype=np.int64)
        image_array = np.zeros((0, size, size, 3), dtype=np.uint8)
    batch_out = {
        "image": image_array,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "key": np.array(kept, dtype=object),
        "url": np.array(kept_urls, dtype=object),  # the shard: keys are unique within one
        "label": np.array(labels, dtype=object),
    }
    return batch_out, counts


def preprocess_batch(
    batch: dict[str, np.ndarray], cfg: DataConfig, counter: str | None = None
) -> dict[str, np.ndarray]:
    """The ``map_batches`` step: preprocess, then book the counts with the run's counter."""
    from mmpretrain.data import quality  # imports ray: not needed by convert's processes

    out, counts = preprocess_rows(batch, cfg)
    quality.report(counter, counts)
    return out
