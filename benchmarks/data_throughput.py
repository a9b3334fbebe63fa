"""Training-ready samples/s: mmpretrain's Ray Data pipeline vs the usual WebDataset loader.

Both read the same shards (photos-like JPEGs of 512-1024 px) and produce the same thing: a
``--image-size`` centre crop of the resized image plus token ids, in batches. The usual loader
is what OpenCLIP does: ``webdataset.WebDataset`` + ``.decode("pil")`` + torchvision transforms
in a torch ``DataLoader`` with the same number of worker processes as Ray Data gets CPUs.

    python benchmarks/data_throughput.py --workers 2 --samples 768

Prints one table; record it in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from mmpretrain.data.shards import write_shard
from mmpretrain.data.synth import synth_sample
from mmpretrain.data.tokenizer import load_tokenizer, train_tokenizer

EPOCHS = 3


def photo(rng: random.Random) -> bytes:
    """A large, detailed JPEG (smooth gradient plus shapes and noise), like a web photo."""
    width, height = rng.randint(512, 1024), rng.randint(512, 1024)
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    base = (x * rng.random() + y * rng.random()) / 2 + np.zeros((1, 1, 3), np.float32)
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (height, width, 3))
    image = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        x0, y0 = rng.randint(0, width - 50), rng.randint(0, height - 50)
        size = rng.randint(20, 200)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        draw.ellipse((x0, y0, x0 + size, y0 + size), fill=colour)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def make_shards(folder: Path, samples: int, shard_size: int) -> list[str]:
    rng = random.Random(0)
    paths = []
    for shard, start in enumerate(range(0, samples, shard_size)):
        rows = []
        for index in range(start, min(start + shard_size, samples)):
            _, caption = synth_sample(index, seed=0, side=32)
            rows.append((f"{shard:05d}{index:05d}", {"jpg": photo(rng), "txt": caption.encode()}))
        path = folder / f"{shard:05d}.tar"
        write_shard(path, rows)
        paths.append(str(path))
    return paths


def run_ray(paths: list[str], tokenizer: str, workers: int, size: int, batch: int) -> tuple:
    import ray

    from mmpretrain.config import load_config
    from mmpretrain.data.pipeline import build_dataset, collate_batch

    ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        cfg = load_config("tiny", [f"data.tokenizer={tokenizer}", f"data.image_size={size}"])
        dataset = build_dataset(paths, cfg.data)
        dataset.context.enable_progress_bars = False
        timings = []
        for _ in range(EPOCHS):
            start, count = time.perf_counter(), 0
            for out in dataset.iter_torch_batches(batch_size=batch, collate_fn=collate_batch):
                count += len(out["image"])
            timings.append((count, time.perf_counter() - start))
        return timings
    finally:
        ray.shutdown()


def run_webdataset(paths: list[str], tokenizer: str, workers: int, size: int, batch: int):
    import torch
    import webdataset as wds
    from torchvision import transforms

    # OpenCLIP's image_transform for eval: resize shorter side, centre crop, to tensor, normalise.
    image_transform = transforms.Compose(
        [
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize((0.481, 0.458, 0.408), (0.269, 0.261, 0.276)),
        ]
    )
    encode = load_tokenizer(tokenizer).encode

    def tokenize(text: str) -> torch.Tensor:
        return torch.from_numpy(encode([text], 32)[0][0])

    pipeline = (
        wds.WebDataset(
            paths,
            shardshuffle=False,
            nodesplitter=wds.split_by_node,
            workersplitter=wds.split_by_worker,
            empty_check=False,
        )
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(lambda image: image_transform(image.convert("RGB")), tokenize)
        .batched(batch, partial=True)
    )
    loader = wds.WebLoader(pipeline, batch_size=None, num_workers=workers, persistent_workers=True)
    timings = []
    for _ in range(EPOCHS):
        start, count = time.perf_counter(), 0
        for images, _ in loader:
            count += len(images)
        timings.append((count, time.perf_counter() - start))
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=768)
    parser.add_argument("--shard-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")

    with tempfile.TemporaryDirectory(prefix="mmpretrain-bench-") as tmp:
        folder = Path(tmp)
        paths = make_shards(folder, args.samples, args.shard_size)
        tokenizer = str(train_tokenizer(str(folder), folder / "tokenizer", vocab_size=300))
        common = (paths, tokenizer, args.workers, args.image_size, args.batch_size)
        usual = run_webdataset(*common)
        ours = run_ray(*common)

    assert all(n == args.samples for n, _ in usual + ours), (usual, ours)
    print(
        f"{args.samples} samples, 512-1024 px JPEG sources, {args.image_size} px crops, "
        f"{args.workers} worker processes / CPUs, batch {args.batch_size}; "
        "epoch 1 includes start-up, the last epoch is steady state"
    )
    print(f"{'loader':<44} {'epoch 1 s':>10} {'last s':>8} {'samples/s':>10}")
    rates = {}
    for name, timings in (
        ("webdataset.WebDataset + DataLoader (usual)", usual),
        ("mmpretrain Ray Data pipeline", ours),
    ):
        rates[name] = args.samples / timings[-1][1]
        print(f"{name:<44} {timings[0][1]:>10.1f} {timings[-1][1]:>8.1f} {rates[name]:>10.1f}")
    usual_rate, ours_rate = rates.values()
    label = "steady-state ratio (mmpretrain / usual)"
    print(f"{label:<44} {'':>10} {'':>8} {ours_rate / usual_rate:>9.2f}x")


if __name__ == "__main__":
    main()
