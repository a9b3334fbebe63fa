"""Training-step time and peak memory of the fused model, per fusion variant and speed switch.

One forward + backward of the whole pretraining task (all active objectives) on random uint8
images and token ids, single process, no Ray, no DeepSpeed: what each model choice costs by
itself. Each variant runs in a fresh subprocess so its peak memory is its own (max RSS on CPU,
``torch.cuda.max_memory_allocated`` on GPU).

    python benchmarks/model_step.py --preset tiny --batch 32
    python benchmarks/model_step.py --preset base --batch 4 --iters 2          # CPU, slow
    python benchmarks/model_step.py --preset base --batch 64 --device cuda     # a GPU node

Prints one table; record it in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

VARIANTS: dict[str, list[str]] = {
    "cross_attention": ["model.fusion.type=cross_attention"],
    "merged": ["model.fusion.type=merged"],
    "co_attention": ["model.fusion.type=co_attention"],
    "gated": ["model.fusion.type=gated"],
    "gated + activation ckpt": ["model.fusion.type=gated", "train.activation_checkpointing=true"],
    "gated, channels-first": ["model.fusion.type=gated", "train.channels_last=false"],
    "gated, ITC+ITM+MLM only": [
        "model.fusion.type=gated",
        "objectives.text_mlm=0",
        "objectives.image_ssl=0",
    ],
    "gated + momentum distill": ["model.fusion.type=gated", "objectives.distill=true"],
}


def measure(preset: str, overrides: list[str], batch: int, iters: int, device: str) -> dict:
    """Runs inside the subprocess: builds the task, times ``iters`` steps after one warm-up."""
    import torch
    from _common import (
        build_task,
        random_pairs,
        seconds_per_step,
        temporary_tokenizer,
        training_step,
    )

    from mmpretrain.config import load_config
    from mmpretrain.train.engine import build_optimizer

    cfg = load_config(preset, overrides)
    tokenizer = temporary_tokenizer()
    task = build_task(cfg, tokenizer, device)
    images, ids, mask = random_pairs(cfg, tokenizer, batch, device)
    optimizer = build_optimizer(task, cfg)
    step = training_step(
        task, lambda: task(images, ids, mask)["loss"], optimizer, device, bf16=device == "cuda"
    )
    seconds = seconds_per_step(step, device, warmup=1, iters=iters)
    if device == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"step_s": seconds, "samples_per_s": batch / seconds, "peak_mb": peak_mb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # subprocess entry
    args = parser.parse_args()
    if args.only is not None:
        result = measure(args.preset, VARIANTS[args.only], args.batch, args.iters, args.device)
        print(json.dumps(result))
        return

    memory = "peak GPU MB" if args.device == "cuda" else "peak RSS MB"
    print(f"preset {args.preset}, batch {args.batch}, device {args.device}, {args.iters} steps")
    print(f"| variant | step s | samples/s | {memory} |")
    print("|---|---:|---:|---:|")
    for name in VARIANTS:
        command = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch),
                   "--iters", str(args.iters), "--device", args.device, "--only", name]  # fmt: skip
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {name} | {row['step_s']:.3f} | {row['samples_per_s']:.1f} | {row['peak_mb']:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
