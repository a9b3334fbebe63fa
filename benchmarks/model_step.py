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
import time

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
VOCAB = 30522  # BERT-base's vocabulary, so text heads cost what they would on real data


def measure(preset: str, overrides: list[str], batch: int, iters: int, device: str) -> dict:
    """Runs inside the subprocess: builds the task, times ``iters`` steps after one warm-up."""
    import torch

    from mmpretrain.config import load_config
    from mmpretrain.model import TokenIds, build_task

    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    task = build_task(
        cfg.model, cfg.objectives, TokenIds(VOCAB, 0, 101, 102, 103), cfg.data.max_text_len
    ).to(device)
    task.encoder.set_speed_options(
        channels_last=cfg.train.channels_last,
        activation_checkpointing=cfg.train.activation_checkpointing,
    )
    size, length = cfg.data.image_size, cfg.data.max_text_len
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, device=device)
    ids = torch.randint(1000, VOCAB, (batch, length), device=device)
    ids[:, 0] = 101
    mask = torch.ones_like(ids)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=1e-4)
    bf16 = device == "cuda"

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = task(images, ids, mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, kernels, optimizer state
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    seconds = (time.perf_counter() - start) / iters
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
