"""Builders of real shards holding every kind of bad and odd sample the data path must survive."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from mmpretrain.data.shards import write_shard
from mmpretrain.data.synth import synth_sample

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_claiming_size(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (a decompression bomb's calling card)."""
    small = encode(Image.new("L", (4, 4)), "PNG")
    ihdr_at = small.index(b"IHDR")
    fields = struct.pack(">II", width, height) + small[ihdr_at + 12 : ihdr_at + 17]
    chunk = b"IHDR" + fields
    patched = struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return small[: ihdr_at - 4] + patched + small[ihdr_at + 4 + 13 + 4 :]


def rotated_by_exif() -> bytes:
    """Stored 80x40, left half red, right half blue, with EXIF orientation 6 (90 degrees CW)."""
    image = Image.new("RGB", (80, 40), RED)
    image.paste(BLUE, (40, 0, 80, 40))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def odd_images() -> dict[str, tuple[str, bytes]]:
    """key -> (member extension, bytes) of valid images in unusual encodings."""
    cmyk = Image.new("CMYK", (48, 48), (0, 255, 255, 0))  # pure red in CMYK
    palette = Image.new("P", (48, 48), 0)
    palette.putpalette([0, 0, 0, *RED] + [0] * 762)
    palette.paste(1, (0, 0, 48, 24))  # top half red (index 1), bottom transparent (index 0)
    grey = Image.new("L", (48, 48), 128)
    sixteen = Image.fromarray(np.full((48, 48), 65535, dtype=np.uint16))
    rgba = Image.new("RGBA", (48, 48), (*RED, 255))
    rgba.paste((0, 0, 0, 0), (0, 24, 48, 48))  # bottom half fully transparent black
    return {
        "odd-cmyk": ("jpg", encode(cmyk, "JPEG", quality=95)),
        "odd-palette": ("png", encode(palette, "PNG", transparency=0)),
        "odd-grey": ("png", encode(grey, "PNG")),
        "odd-16bit": ("png", encode(sixteen, "PNG")),
        "odd-rgba": ("webp", encode(rgba, "WEBP", lossless=True)),
        "odd-exif": ("JPG", rotated_by_exif()),  # upper-case extension, as cameras write it
    }


# key -> expected skip reason for each bad sample.
BAD_REASONS = {
    "bad-corrupt": "corrupt_image",
    "bad-truncated": "corrupt_image",
    "bad-zero-bytes": "empty_member",
    "bad-too-small": "image_too_small",
    "bad-bomb": "image_too_large",
    "bad-no-caption": "missing_caption",
    "bad-empty-caption": "empty_caption",
    "bad-not-utf8": "caption_not_utf8",
    "bad-no-image": "no_image",
}


def bad_samples() -> list[tuple[str, dict[str, bytes]]]:
    jpeg, caption = synth_sample(0, seed=5, side=96)
    text = caption.encode()
    return [
        ("bad-corrupt", {"jpg": b"this is not an image at all", "txt": text}),
        ("bad-truncated", {"jpg": jpeg[: len(jpeg) // 2], "txt": text}),
        ("bad-zero-bytes", {"jpg": b"", "txt": text}),
        ("bad-too-small", {"png": encode(Image.new("RGB", (8, 8), RED), "PNG"), "txt": text}),
        ("bad-bomb", {"png": png_claiming_size(60_000, 60_000), "txt": text}),
        ("bad-no-caption", {"jpg": jpeg}),
        ("bad-empty-caption", {"jpg": jpeg, "txt": b"   \n"}),
        ("bad-not-utf8", {"jpg": jpeg, "txt": b"caf\xe9 \xff\xfe"}),
        ("bad-no-image", {"txt": text}),
    ]


def good_samples(count: int, seed: int = 9) -> list[tuple[str, dict[str, bytes]]]:
    samples = []
    for index in range(count):
        jpeg, caption = synth_sample(index, seed=seed, side=96)
        samples.append((f"good-{index:04d}", {"jpg": jpeg, "txt": caption.encode()}))
    return samples


def odd_samples() -> list[tuple[str, dict[str, bytes]]]:
    return [
        (key, {ext: payload, "txt": f"an odd image {key}".encode()})
        for key, (ext, payload) in odd_images().items()
    ]


def write_mixed_shards(folder: Path, good: int) -> dict[str, list[str]]:
    """Two shards (one gzip-compressed) mixing good, odd and bad samples; returns keys by kind."""
    folder.mkdir(parents=True, exist_ok=True)
    goods, odds, bads = good_samples(good), odd_samples(), bad_samples()
    half = len(goods) // 2
    write_shard(folder / "00000.tar", [*goods[:half], *bads[:5], *odds[:3]])
    plain = folder / "00001.tar"
    write_shard(plain, [*goods[half:], *bads[5:], *odds[3:]])
    gz = folder / "00001.tar.gz"
    gz.write_bytes(gzip.compress(plain.read_bytes(), mtime=0))
    plain.unlink()
    return {
        "good": [k for k, _ in goods],
        "odd": [k for k, _ in odds],
        "bad": [k for k, _ in bads],
    }


def write_truncated_copy(folder: Path) -> list[str]:
    """Adds 00002.tar: 00000.tar cut halfway through its 7th member (the 4th sample's image).

    Returns the keys of the three whole samples before the damage.
    """
    source = folder / "00000.tar"
    with tarfile.open(source) as tar:
        members = tar.getmembers()
    cut = members[6].offset_data + members[6].size // 2
    (folder / "00002.tar").write_bytes(source.read_bytes()[:cut])
    return sorted({m.name.split(".")[0] for m in members[:6]})
