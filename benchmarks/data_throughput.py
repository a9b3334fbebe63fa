"""Training-ready samples/s: mmpretrain's Ray Data pipeline vs OpenCLIP's loader vs the ceiling.

All read the same shards (photo-like JPEGs of 512-1024 px, written deterministically) and
produce square crops plus token ids in batches:

- mmpretrain: ``build_dataset`` + ``iter_torch_batches(collate_fn=collate_batch)``, as the
  training loop consumes it, with ``data.crop=center`` and ``data.crop=random_resized``;
  Ray is started with ``num_cpus=N``.
- OpenCLIP: its own training loader, ``open_clip_train.data.get_wds_dataset`` with RN50's train
  transform (``open_clip.transform.image_transform(size, is_train=True)``: RandomResizedCrop
  scale (0.9, 1), float32 normalised tensors) and its ``SimpleTokenizer`` (the BPE vocabulary
  ships in the package: nothing is downloaded), in its DataLoader with N worker processes.
- the ceiling: one process doing the least work that yields the same crops (tar read, JPEG
  decoded at the largest draft reduction, one resample of the centre box, uint8); N cores can
  at best do N times its rate. Each loader's share of the ceiling says how much of the CPU it
  turns into samples.

    .venv/bin/python benchmarks/data_throughput.py --cpus 1 2 --samples 768

Needs the ``bench`` extra (open-clip-torch, webdataset). Prints one table; the integrator
records it in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import platform
import random
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from PIL import Image, ImageDraw

from mmpretrain.data.shards import write_shard
from mmpretrain.data.synth import synth_sample
from mmpretrain.data.tokenizer import train_tokenizer

CROPS = ("center", "random_resized")


def photo(rng: random.Random, sides: tuple[int, int] = (512, 1024)) -> bytes:
    """A large, detailed JPEG (smooth gradient plus shapes and noise), like a web photo."""
    width, height = rng.randint(*sides), rng.randint(*sides)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = (x * rng.random() + y * rng.random()) / 2 + np.zeros((1, 1, 3), np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randint(0, width - width // 10), rng.randint(0, height - height // 10)
        size = rng.randint(width // 25, width // 5)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_shards(
    folder: Path, samples: int, shard_size: int, sides: tuple[int, int] = (512, 1024)
) -> list[str]:
    rng = random.Random(0)
    paths = []
    for shard, start in enumerate(range(0, samples, shard_size)):
        rows = []
        for index in range(start, min(start + shard_size, samples)):
            _, caption = synth_sample(index, seed=0, side=32)
            rows.append(
                (f"{shard:05d}{index:05d}", {"jpg": photo(rng, sides), "txt": caption.encode()})
            )
        path = folder / f"{shard:05d}.tar"
        write_shard(path, rows)
        paths.append(str(path))
    return paths


def ceiling_pass(paths: list[str], size: int) -> tuple[int, float]:
    """(samples, seconds) of the cheapest decode of every sample, in this one process."""
    start, count = time.perf_counter(), 0
    for path in paths:
        with tarfile.open(path) as tar:
            for member in tar:
                if not member.name.endswith(".jpg"):
                    continue
                with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                    width, height = image.size
                    side = min(width, height)
                    reduce = next((r for r in (8, 4, 2) if side >= r * size), 1)
                    image.draft("RGB", (width // reduce, height // reduce))
                    w, h = image.size
                    s = min(w, h)
                    box = ((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2)
                    out = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
                    np.asarray(out, dtype=np.uint8)
                count += 1
    return count, time.perf_counter() - start


def run_mmpretrain(
    paths: list[str], tokenizer: str, size: int, batch: int, crop: str, epochs: int
) -> list[tuple[int, float]]:
    """(samples, seconds) per epoch of the training pipeline, on the Ray already started."""
    from mmpretrain.config import load_config
    from mmpretrain.data.pipeline import build_dataset, collate_batch

    cfg = load_config(
        "tiny", [f"data.tokenizer={tokenizer}", f"data.image_size={size}", f"data.crop={crop}"]
    )
    # As launch.py builds the training split: shuffled shard order, seeded crops.
    dataset = build_dataset(paths, cfg.data, shuffle_seed=0, crop_seed=0)
    dataset.context.enable_progress_bars = False
    timings = []
    for _ in range(epochs):
        start, count = time.perf_counter(), 0
        for out in dataset.iter_torch_batches(batch_size=batch, collate_fn=collate_batch):
            count += len(out["image"])
        timings.append((count, time.perf_counter() - start))
    return timings


def openclip_args(paths: list[str], samples: int, batch: int, workers: int) -> SimpleNamespace:
    """The namespace open_clip_train/params.py would parse for a one-process wds run."""
    return SimpleNamespace(
        train_data="::".join(paths),
        val_data=None,
        train_num_samples=samples,
        val_num_samples=None,
        dataset_type="webdataset",
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        batch_size=batch,
        workers=workers,
        world_size=1,
        rank=0,
        distributed=False,
        seed=0,
    )


def run_openclip(
    paths: list[str], samples: int, size: int, batch: int, workers: int, epochs: int
) -> list[tuple[int, float]]:
    """(samples, seconds) per epoch of OpenCLIP's own training loader."""
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import image_transform
    from open_clip_train.data import get_wds_dataset

    preprocess = image_transform(size, is_train=True)  # RN50's: RandomResizedCrop (0.9, 1)
    args = openclip_args(paths, samples, batch, workers)
    data = get_wds_dataset(args, preprocess, is_train=True, epoch=0, tokenizer=SimpleTokenizer())
    timings = []
    try:
        for epoch in range(epochs):
            data.set_epoch(epoch)  # as open_clip_train/train.py does before each epoch
            start, count = time.perf_counter(), 0
            for images, _texts in data.dataloader:
                count += len(images)
            timings.append((count, time.perf_counter() - start))
    finally:
        iterator = getattr(data.dataloader, "_iterator", None)
        if iterator is not None:
            iterator._shutdown_workers()  # persistent workers: end them before Ray starts
    return timings


@dataclass
class Row:
    loader: str
    cpus: int
    epoch1_s: float
    last_s: float
    rate: float  # samples/s in the last (steady-state) epoch
    ceiling: float  # the ceiling's samples/s at these CPUs
    count: int  # samples delivered in the last epoch

    @property
    def per_core(self) -> float:
        return self.rate / self.cpus

    @property
    def share(self) -> float:
        return self.rate / self.ceiling


def measure(
    paths: list[str],
    tokenizer: str,
    samples: int,
    cpus: list[int],
    size: int,
    batch: int,
    epochs: int,
) -> tuple[float, list[Row]]:
    """(ceiling samples/s per core, one row per loader and CPU count)."""
    import ray

    ceiling_pass(paths, size)  # warm the page cache and the imports
    count, seconds = min((ceiling_pass(paths, size) for _ in range(2)), key=lambda t: t[1])
    per_core = count / seconds
    rows = []

    def row(name: str, n: int, timings: list[tuple[int, float]]) -> Row:
        last_count, last_s = timings[-1]
        return Row(name, n, timings[0][1], last_s, last_count / last_s, per_core * n, last_count)

    for n in cpus:  # OpenCLIP first: its DataLoader forks, which a live Ray must not see
        rows.append(
            row("OpenCLIP get_wds_dataset", n, run_openclip(paths, samples, size, batch, n, epochs))
        )
    for n in cpus:
        ray.init(num_cpus=n, include_dashboard=False, log_to_driver=False)
        logging.getLogger("ray.data").setLevel(logging.WARNING)  # one table, not Ray's log
        try:
            for crop in CROPS:
                timings = run_mmpretrain(paths, tokenizer, size, batch, crop, epochs)
                rows.append(row(f"mmpretrain crop={crop}", n, timings))
        finally:
            ray.shutdown()
    return per_core, rows


def format_table(per_core: float, rows: list[Row], cpus: list[int], header: str) -> str:
    openclip = {r.cpus: r.rate for r in rows if r.loader.startswith("OpenCLIP")}
    lines = [
        header,
        f"{'loader':<30} {'CPUs':>4} {'epoch 1 s':>9} {'last s':>7} {'samples/s':>10} "
        f"{'per core':>9} {'of ceiling':>10} {'x OpenCLIP':>10}",
    ]
    for n in cpus:
        lines.append(
            f"{'ceiling (1 process x CPUs)':<30} {n:>4} {'':>9} {'':>7} {per_core * n:>10.1f} "
            f"{per_core:>9.1f} {'100%':>10} {'':>10}"
        )
        for r in (r for r in rows if r.cpus == n):
            lines.append(
                f"{r.loader:<30} {n:>4} {r.epoch1_s:>9.1f} {r.last_s:>7.1f} {r.rate:>10.1f} "
                f"{r.per_core:>9.1f} {r.share:>10.0%} {r.rate / openclip[n]:>9.2f}x"
            )
    return "\n".join(lines)


def check_sizes(samples: int, shard_size: int, batch: int, cpus: list[int]) -> None:
    """OpenCLIP's training epoch is whole batches per worker (wds with_epoch): only with whole
    shards per worker and whole batches per shard does it deliver each sample exactly once."""
    shards = samples // shard_size
    if samples % shard_size or shard_size % batch or any(shards % n for n in cpus):
        raise SystemExit(
            f"--samples {samples} must be whole shards of --shard-size {shard_size}, the shards "
            f"divisible among {cpus} workers, and the shard size a multiple of --batch-size {batch}"
        )


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3, help="the last is the steady state")
    parser.add_argument("--sides", type=int, nargs=2, default=[512, 1024], help="source px")
    args = parser.parse_args(argv)
    check_sizes(args.samples, args.shard_size, args.batch_size, args.cpus)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    with tempfile.TemporaryDirectory(prefix="mmpretrain-bench-") as tmp:
        folder = Path(tmp)
        paths = make_shards(folder, args.samples, args.shard_size, tuple(args.sides))
        tokenizer = str(train_tokenizer(str(folder), folder / "tokenizer", vocab_size=300))
        per_core, rows = measure(
            paths,
            tokenizer,
            args.samples,
            args.cpus,
            args.image_size,
            args.batch_size,
            args.epochs,
        )
    short = [r for r in rows if r.count != args.samples]
    assert not short, f"loaders that did not deliver every sample once: {short}"
    header = (
        f"{cpu_model()}, {os.cpu_count()} cores visible; "
        f"{args.samples} samples, {args.sides[0]}-{args.sides[1]} px JPEGs, "
        f"{args.image_size} px crops, batch {args.batch_size}; last of {args.epochs} epochs "
        "(epoch 1 includes start-up)"
    )
    table = format_table(per_core, rows, args.cpus, header)
    print(table)
    return table


if __name__ == "__main__":
    main()
