"""Per-sample preprocessing run inside Ray Data tasks: decode, crop, tokenize.

Images leave here as uint8 HWC arrays (a quarter of float32's bytes through the object store);
normalisation happens on the training device. A sample that cannot be used is dropped and
counted by reason (``SkipReason``); it never raises out of a batch, so one bad JPEG in a corpus of
millions cannot fail a block or the run.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
from collections import Counter
from enum import Enum
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from mmpretrain.config import DataConfig
from mmpretrain.data.tokenizer import load_tokenizer

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
EXIF_ORIENTATION = 0x0112
EPOCH_COLUMN = "__epoch__"  # the pass a row was read for (see webdataset_source.py)


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


def decode_image(payload: bytes, cfg: DataConfig, crop_seed: int | None = None) -> np.ndarray:
    """Decodes image bytes to a ``data.image_size`` square RGB uint8 crop.

    The crop is the centre square, unless ``crop_seed`` is given and ``data.crop`` is
    ``random_resized``: then a box drawn by ``random_resized_box`` from that seed. Only the
    training pipeline passes a seed, so evaluation, ``data inspect``, reports and inference
    always see the centre crop.

    Raises UnusableSampleError with the reason when the bytes cannot make a training image
    (the size limits are ``data.min_image_side`` and ``data.max_image_pixels``: read from the
    config itself, so training, ``data inspect`` and reports can never disagree on them).

    The pixel count is checked from the header before any pixel is decoded, so a decompression
    bomb costs nothing. The crop box is chosen from the header size too, so ``draft`` can let
    libjpeg decode at the largest reduction (1/2, 1/4, 1/8) that still leaves the box at least
    ``image_size`` pixels on each side: most of the decode cost for web images. Then one
    resample of just the box. EXIF orientation is applied, as a camera's viewer would.
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
            # JPEG and WebP carry EXIF in the header; reading it costs a parse, so only then.
            orientation = _orientation(image) if "exif" in image.info else 1
            turned = orientation in TRANSPOSED_ORIENTATIONS  # width and height swap
            upright = (height, width) if turned else (width, height)
            box = _crop_fractions(upright, cfg, crop_seed)
            # The largest JPEG reduction that leaves the box >= size on both sides; asking
            # draft for exactly the reduced size makes Pillow pick that very reduction.
            box_side = min((box[2] - box[0]) * upright[0], (box[3] - box[1]) * upright[1])
            reduce = next((r for r in DRAFT_REDUCTIONS if box_side + 1e-6 >= r * size), 1)
            image.draft("RGB", (width // reduce, height // reduce))
            image.load()  # decode now, inside the try: truncated data fails here
            if orientation == 1 and "exif" in image.info:  # PNG's eXIf comes after the pixels
                orientation = _orientation(image)
                if orientation in TRANSPOSED_ORIENTATIONS:  # no draft for PNG: only the box
                    box = _crop_fractions((height, width), cfg, crop_seed)
            if orientation != 1:
                image = ImageOps.exif_transpose(image)
            if image.mode != "RGB":
                image = flatten_to_rgb(image)
    except UnusableSampleError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own header check, past 2x its limit
        raise UnusableSampleError(SkipReason.IMAGE_TOO_LARGE, str(exc)) from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnusableSampleError(SkipReason.CORRUPT_IMAGE, str(exc)) from exc
    if crop_seed is None or cfg.crop == "center":
        return centre_square(image, size)  # from the decoded size: no rounding of fractions
    return resize_box(image, box, size)


TRANSPOSED_ORIENTATIONS = frozenset((5, 6, 7, 8))  # EXIF orientations that turn by 90 degrees
CROP_RATIO = (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop aspect range
DRAFT_REDUCTIONS = (8, 4, 2)  # the scales libjpeg decodes at, besides 1
CROP_TRIES = 10  # torchvision's: then it falls back to a centre crop


def _orientation(image: Image.Image) -> int:
    return int(image.getexif().get(EXIF_ORIENTATION, 1))


def _crop_fractions(
    upright: tuple[int, int], cfg: DataConfig, crop_seed: int | None
) -> tuple[float, float, float, float]:
    """The crop box as fractions (left, top, right, bottom) of the upright image."""
    width, height = upright
    if crop_seed is None or cfg.crop == "center":
        left, top, right, bottom = centre_square_box(width, height)
    else:
        low, high = cfg.crop_scale
        left, top, right, bottom = random_resized_box(
            width, height, random.Random(crop_seed), (low, high)
        )
    return left / width, top / height, right / width, bottom / height


def centre_square_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centre square, the same picture as "resize the shorter side, then centre crop"."""
    side = min(width, height)
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def random_resized_box(
    width: int,
    height: int,
    rng: random.Random,
    scale: tuple[float, float],
    ratio: tuple[float, float] = CROP_RATIO,
) -> tuple[int, int, int, int]:
    """torchvision's ``RandomResizedCrop.get_params``, in pixels: (left, top, right, bottom).

    A box of ``scale`` of the area with a log-uniform aspect in ``ratio``; after ``CROP_TRIES``
    draws that do not fit, the whole image clamped to ``ratio``, centred (torchvision's fallback).
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(CROP_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = rng.randint(0, height - h)
            left = rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def crop_seed_for(seed: int, epoch: int, url: str, key: str) -> int:
    """A sample's crop seed: stable across processes, restarts and resumes.

    Ray runs the preprocessing in whichever worker process is free, so global RNG state would
    make the crops depend on scheduling. A hash of what names the draw (the run's seed, the
    epoch, the shard and the key: keys are unique only within a shard) gives every sample the
    same crop in a re-run or a resumed epoch, and a new one each epoch.
    """
    digest = hashlib.blake2b(f"{seed}|{epoch}|{url}|{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def resize_box(image: Image.Image, box: tuple[float, float, float, float], size: int) -> np.ndarray:
    """RGB image -> ``size`` x ``size`` uint8 of the box (fractions of the image), one resample.

    Resampling just the box skips the pixels that the crop throws away.
    """
    width, height = image.size
    pixels = (box[0] * width, box[1] * height, box[2] * width, box[3] * height)
    image = image.resize((size, size), Image.Resampling.BICUBIC, box=pixels)
    return np.asarray(image, dtype=np.uint8)


def centre_square(image: Image.Image, size: int) -> np.ndarray:
    """RGB image -> ``size`` x ``size`` uint8 centre crop, as training and inference see it.

    Centre square first, then one resize of just that box: the same picture as "resize the
    shorter side, then centre crop", without resampling pixels that the crop throws away.
    """
    box = centre_square_box(*image.size)
    return np.asarray(image.resize((size, size), Image.Resampling.BICUBIC, box=box), np.uint8)


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


def prepare_sample(
    members: dict[str, Any], cfg: DataConfig, crop_seed: int | None = None
) -> tuple[np.ndarray, str]:
    """One sample's members (lower-cased extension -> bytes) -> (image, caption).

    ``crop_seed``: this sample's random crop (training only); None = the centre crop."""
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if members.get(ext) is not None), None)
    if image_ext is None:
        raise UnusableSampleError(SkipReason.NO_IMAGE)
    caption = extract_caption(members, cfg)
    image = decode_image(members[image_ext], cfg, crop_seed)
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
    batch: dict[str, np.ndarray], cfg: DataConfig, crop_seed: int | None = None
) -> tuple[dict[str, np.ndarray], Counter]:
    """Raw WebDataset rows -> training-ready arrays, plus counts of seen and skipped samples.

    ``crop_seed`` (the run's seed; training only) turns on ``data.crop=random_resized``: each
    sample's box comes from ``crop_seed_for`` with the epoch the reader put in ``__epoch__``.
    """
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
    epochs = batch.get(EPOCH_COLUMN)
    random_crop = crop_seed is not None and cfg.crop == "random_resized"
    for index, key in enumerate(keys):
        if damage is not None and isinstance(damage[index], str):
            counts[f"skipped_{SkipReason.TRUNCATED_TAR.value}"] += 1
            continue
        members = {
            lower: next((v for n in names if (v := _as_bytes(batch[n][index])) is not None), None)
            for lower, names in columns.items()
        }
        sample_seed = None
        if random_crop:
            epoch = int(epochs[index]) if epochs is not None else 0
            sample_seed = crop_seed_for(crop_seed, epoch, urls[index], key)
        try:
            image, caption = prepare_sample(members, cfg, sample_seed)
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
    batch: dict[str, np.ndarray],
    cfg: DataConfig,
    counter: str | None = None,
    crop_seed: int | None = None,
) -> dict[str, np.ndarray]:
    """The ``map_batches`` step: preprocess, then book the counts with the run's counter."""
    from mmpretrain.data import quality  # imports ray: not needed by convert's processes

    out, counts = preprocess_rows(batch, cfg, crop_seed)
    quality.report(counter, counts)
    return out
