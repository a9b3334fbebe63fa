"""Per-sample preprocessing run inside Ray Data tasks: decode, crop, tokenize.

Images leave here as uint8 HWC arrays (a quarter of float32's bytes through the object store);
normalisation happens on the training device.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


def decode_image(payload: bytes, size: int) -> np.ndarray:
    """Decodes image bytes to a ``size`` x ``size`` RGB uint8 centre crop.

    ``draft`` lets libjpeg decode at a reduced scale when the source is much larger than the
    crop, which is most of the decode cost for web images.
    """
    with Image.open(io.BytesIO(payload)) as image:
        image.draft("RGB", (size, size))
        image = image.convert("RGB")
        width, height = image.size
        scale = size / min(width, height)
        resized = (max(size, round(width * scale)), max(size, round(height * scale)))
        image = image.resize(resized, Image.Resampling.BICUBIC)
        left = (resized[0] - size) // 2
        top = (resized[1] - size) // 2
        image = image.crop((left, top, left + size, top + size))
        return np.asarray(image, dtype=np.uint8)


def _first_present(row: dict[str, Any], extensions: tuple[str, ...]) -> bytes | None:
    for extension in extensions:
        value = row.get(extension)
        if value is not None and len(value) > 0:
            return value
    return None


def preprocess_batch(
    batch: dict[str, np.ndarray], image_size: int, max_text_len: int, tokenizer_path: str
) -> dict[str, np.ndarray]:
    """Turns a batch of raw WebDataset rows into training-ready arrays.

    A sample whose image does not decode or whose caption is missing is dropped with a warning
    naming its key, so one bad member never fails the block.
    """
    from mmpretrain.data.tokenizer import load_tokenizer

    keys = [str(k) for k in batch["__key__"]]
    images: list[np.ndarray] = []
    captions: list[str] = []
    kept_keys: list[str] = []
    for index, key in enumerate(keys):
        row = {name: batch[name][index] for name in batch if name in (*IMAGE_EXTENSIONS, "txt")}
        image_bytes = _first_present(row, IMAGE_EXTENSIONS)
        caption_bytes = row.get("txt")
        if image_bytes is None or caption_bytes is None or len(caption_bytes) == 0:
            logger.warning("dropping sample %s: missing image or caption", key)
            continue
        try:
            image = decode_image(image_bytes, image_size)
            caption = bytes(caption_bytes).decode("utf-8").strip()
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            logger.warning("dropping sample %s: %s", key, exc)
            continue
        if not caption:
            logger.warning("dropping sample %s: empty caption", key)
            continue
        images.append(image)
        captions.append(caption)
        kept_keys.append(key)

    tokenizer = load_tokenizer(tokenizer_path)
    if captions:
        input_ids, attention_mask = tokenizer.encode(captions, max_text_len)
        image_array = np.stack(images)
    else:
        input_ids = np.zeros((0, max_text_len), dtype=np.int64)
        attention_mask = np.zeros((0, max_text_len), dtype=np.int64)
        image_array = np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return {
        "image": image_array,
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "key": np.array(kept_keys, dtype=object),
    }
