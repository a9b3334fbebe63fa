"""A synthetic image-text data set whose captions describe the image.

Each image holds one to three coloured shapes in cells of a 3x3 grid; the caption names colour,
size, shape and position of each ("a large red circle at the top left and a small blue square in
the center"). Captions are rarely repeated (8 colours x 6 shapes x 2 sizes x 9 cells, combined),
so held-out retrieval can only beat chance if the model has learned to ground words in pixels.
Each sample also carries a ``cls`` label (the shape named first) for zero-shot evaluation.
"""

from __future__ import annotations

import io
import json
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mmpretrain.data.shards import write_shard

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 210, 20),
    "purple": (140, 40, 170),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
    "cyan": (20, 200, 210),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
SIZES = {"small": 0.18, "large": 0.30}
CELLS = {
    (0, 0): "at the top left",
    (1, 0): "at the top",
    (2, 0): "at the top right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "at the bottom left",
    (1, 2): "at the bottom",
    (2, 2): "at the bottom right",
}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}


@dataclass(frozen=True)
class ShapeSpec:
    colour: str
    shape: str
    size: str
    cell: tuple[int, int]

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.shape} {CELLS[self.cell]}"


def sample_scene(rng: random.Random) -> list[ShapeSpec]:
    cells = rng.sample(sorted(CELLS), k=rng.randint(1, 3))
    return [
        ShapeSpec(rng.choice(sorted(COLOURS)), rng.choice(SHAPES), rng.choice(sorted(SIZES)), cell)
        for cell in cells
    ]


def caption_for(scene: list[ShapeSpec], rng: random.Random) -> str:
    phrases = [spec.phrase() for spec in scene]
    body = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    opener = rng.choice(
        ("", "a picture of ", "an image with ", f"{NUMBER_WORDS[len(scene)]} shapes: ")
    )
    return opener + body


def _draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, side: int, rng: random.Random) -> None:
    cell = side / 3
    jitter = cell * 0.12
    cx = (spec.cell[0] + 0.5) * cell + rng.uniform(-jitter, jitter)
    cy = (spec.cell[1] + 0.5) * cell + rng.uniform(-jitter, jitter)
    r = SIZES[spec.size] * cell * 1.6
    fill = COLOURS[spec.colour]
    box = (cx - r, cy - r, cx + r, cy + r)
    if spec.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif spec.shape == "square":
        draw.rectangle(box, fill=fill)
    elif spec.shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif spec.shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    elif spec.shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=fill)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=fill)
    elif spec.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 2.5)))
    else:
        raise ValueError(f"unknown shape {spec.shape!r}")


def render_scene(scene: list[ShapeSpec], side: int, rng: random.Random) -> Image.Image:
    shade = rng.randint(215, 250)
    image = Image.new("RGB", (side, side), (shade, shade, shade))
    draw = ImageDraw.Draw(image)
    for spec in scene:
        _draw_shape(draw, spec, side, rng)
    return image


def synth_sample(index: int, seed: int, side: int) -> tuple[bytes, str]:
    """Renders sample ``index`` of the data set for ``seed``; independent of other samples."""
    jpeg, caption, _ = synth_labelled_sample(index, seed, side)
    return jpeg, caption


def synth_labelled_sample(index: int, seed: int, side: int) -> tuple[bytes, str, str]:
    """(JPEG, caption, class label): the label is the shape the caption names first, which
    zero-shot evaluation tries to recognise from a prompt such as "a picture of a circle"."""
    rng = random.Random(f"{seed}:{index}")
    scene = sample_scene(rng)
    caption = caption_for(scene, rng)
    buffer = io.BytesIO()
    render_scene(scene, side, rng).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue(), caption, scene[0].shape


def write_synthetic_shards(
    out_dir: str | Path,
    samples: int,
    shard_size: int,
    seed: int = 0,
    image_side: int = 96,
    first_index: int = 0,
) -> list[Path]:
    """Writes ``samples`` samples as img2dataset-layout shards ``00000.tar``, ``00001.tar``...

    ``first_index`` offsets the sample indices, so a held-out split drawn with the same seed
    never repeats a training sample.
    """
    if samples < 1 or shard_size < 1:
        raise ValueError("samples and shard_size must be >= 1")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for shard_index, start in enumerate(range(0, samples, shard_size)):
        members = []
        for offset in range(start, min(start + shard_size, samples)):
            index = first_index + offset
            jpeg, caption, label = synth_labelled_sample(index, seed, image_side)
            key = f"{shard_index:05d}{offset - start:04d}"
            meta = {
                "key": key,
                "caption": caption,
                "width": image_side,
                "height": image_side,
                "status": "success",
                "url": f"synth://{seed}/{index}",
            }
            members.append(
                (
                    key,
                    {
                        "jpg": jpeg,
                        "txt": caption.encode(),
                        "json": json.dumps(meta).encode(),
                        "cls": label.encode(),
                    },
                )
            )
        path = out / f"{shard_index:05d}.tar"
        write_shard(path, members)
        paths.append(path)
    return paths
