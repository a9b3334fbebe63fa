"""Seconds per training step: a plain PyTorch loop vs DeepSpeed alone vs mmpretrain on Ray Train.

The same model (the preset's whole pretraining task), batch, optimizer (torch AdamW with
mmpretrain's parameter groups, warmup-cosine schedule, gradient clipping) and data, one worker,
the same number of torch threads:

  (a) a plain PyTorch loop over pre-decoded batches in memory: no Ray, no DeepSpeed;
  (b) the same loop through a DeepSpeed engine, ZeRO-0 and ZeRO-2 (one gloo rank), as a
      hand-written DeepSpeed script would do it;
  (c) ``python -m mmpretrain train`` as a user runs it: Ray Train, DeepSpeed ZeRO-2, Ray Data
      decoding the same shards, with every per-step duty of the real loop (stop agreement,
      data position, sample-key log, metrics).

(a) and (b) time each step; (c) is read from the run's ``metrics.jsonl`` (wall time between
two log rows, so logging is included, and the data-wait share rank 0 measured). Each row runs
in a fresh process. The first ``--warmup`` steps are left out everywhere.

    python benchmarks/train_overhead.py --preset tiny --steps 60 --warmup 20 --rounds 3

Prints one table; record it in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

THREADS_NOTE = (
    "torch threads = train.cpus_per_worker in every row; the rest of the cores are left to "
    "Ray Data in (c)"
)
ROWS = ("plain", "plain_fused", "zero0", "zero2")


def load_batches(cfg: Any, shards: list[str], count: int) -> list[dict[str, Any]]:
    """``count`` batches decoded once with the pipeline's own transform, kept in memory."""
    import numpy as np
    import torch

    from mmpretrain.data.shards import iter_shard
    from mmpretrain.data.tokenizer import load_tokenizer
    from mmpretrain.data.transforms import prepare_sample

    tokenizer = load_tokenizer(cfg.data.tokenizer)
    size = cfg.data.batch_size
    images, captions = [], []
    for shard in shards:
        for _, members in iter_shard(shard):
            image, caption = prepare_sample(members, cfg.data)
            images.append(image)
            captions.append(caption)
            if len(images) == size * count:
                break
    batches = []
    for start in range(0, size * count, size):
        ids, mask = tokenizer.encode(captions[start : start + size], cfg.data.max_text_len)
        batches.append(
            {
                "image": torch.from_numpy(np.stack(images[start : start + size])),
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask),
            }
        )
    return batches


def time_steps(step: Any, batches: list[dict[str, Any]], steps: int) -> list[float]:
    durations = []
    for index in range(steps):
        batch = batches[index % len(batches)]
        start = time.perf_counter()
        step(batch["image"], batch["input_ids"], batch["attention_mask"])
        durations.append(time.perf_counter() - start)
    return durations


def plain_step(task: Any, cfg: Any) -> Any:
    """What a hand-written PyTorch loop does per step, with mmpretrain's optimizer settings
    (``optim.fused`` false: torch's default AdamW, one small kernel per tensor on CPU)."""
    import torch

    from mmpretrain.train.engine import build_optimizer, build_scheduler

    optimizer = build_optimizer(task, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    parameters = [p for p in task.parameters() if p.requires_grad]

    def step(images: Any, input_ids: Any, attention_mask: Any) -> None:
        loss = task(images, input_ids, attention_mask)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(parameters, cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()

    return step


def deepspeed_step(task: Any, cfg: Any) -> Any:
    """The same step through mmpretrain's DeepSpeed engine set-up, on a one-rank gloo group."""
    import torch.distributed as dist

    from mmpretrain.ports import free_ports
    from mmpretrain.train.engine import build_engine

    (port,) = free_ports(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    engine = build_engine(task, cfg)

    def step(images: Any, input_ids: Any, attention_mask: Any) -> None:
        losses = engine(images, input_ids, attention_mask)
        engine.backward(losses["loss"])
        engine.step()

    return step


def measure_in_process(row: str, overrides: list[str], shards: list[str], steps: int) -> dict:
    """Rows (a) and (b), inside their own subprocess."""
    import torch

    from mmpretrain.config import load_config
    from mmpretrain.data.tokenizer import load_tokenizer
    from mmpretrain.train.builder import build_training_task

    stage = {"plain": None, "plain_fused": None, "zero0": 0, "zero2": 2}[row]
    fused = "false" if row == "plain" else "true"
    cfg = load_config(
        overrides[0], [*overrides[1:], f"train.zero_stage={stage or 0}", f"optim.fused={fused}"]
    )
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    torch.manual_seed(cfg.train.seed)
    task = build_training_task(cfg, load_tokenizer(cfg.data.tokenizer))
    batches = load_batches(cfg, shards, count=8)
    step = plain_step(task, cfg) if stage is None else deepspeed_step(task, cfg)
    return {"durations": time_steps(step, batches, steps)}


def measure_mmpretrain(
    overrides: list[str], data: Path, storage: Path, steps: int, log_every: int
) -> dict:
    """Row (c): ``python -m mmpretrain train``, timed from its own log rows."""
    command = [
        sys.executable, "-m", "mmpretrain", "train", "--config", overrides[0], *overrides[1:],
        f"data.train={data}", "train.num_workers=1", f"train.max_steps={steps}",
        f"train.log_every={log_every}", f"checkpoint.every={steps}",
        f"train.storage_path={storage}", "train.run_name=overhead",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"mmpretrain train failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (storage / "overhead" / "metrics.jsonl").open()]
    return {"rows": rows}


def mmpretrain_timing(rows: list[dict], warmup: int) -> tuple[float, float]:
    """Wall seconds per step between the first log row at or after ``warmup`` and the last, and
    the data-wait share over those steps (rank 0's, from the same rows)."""
    window = [row for row in rows if row["step"] >= warmup]
    first, last = window[0], window[-1]
    per_step = (last["time"] - first["time"]) / (last["step"] - first["step"])
    step_s = sum(row["step_s"] for row in window[1:])
    wait_s = sum(row["data_wait_s"] for row in window[1:])
    return per_step, wait_s / step_s


def make_data(folder: Path, samples: int, image_side: int) -> tuple[Path, Path]:
    from mmpretrain.data.synth import write_synthetic_shards
    from mmpretrain.data.tokenizer import train_tokenizer

    shards = folder / "shards"
    write_synthetic_shards(shards, samples, shard_size=64, image_side=image_side)
    tokenizer = train_tokenizer(str(shards), folder / "tokenizer", vocab_size=400)
    return shards, Path(tokenizer)


def run_row(row: str, overrides: list[str], shards: list[str], steps: int) -> dict:
    command = [
        *(sys.executable, __file__, "--only", row, "--steps", str(steps)),
        *("--overrides-json", json.dumps(overrides), "--shards-json", json.dumps(shards)),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"row {row} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    preset: str,
    steps: int,
    warmup: int,
    log_every: int,
    cpus_per_worker: float,
    extra: list[str],
    folder: Path,
    rounds: int = 1,
) -> list[dict[str, Any]]:
    """Every row, side by side, ``rounds`` times in turn (a, a', b, b, c, a, ...): this VM's
    speed drifts by several percent over minutes, and interleaving spreads the drift over all
    rows. Returns [{row, step_s, spread, ratio, data_wait}] with each row's median round.

    The shards hold one epoch of ``steps`` batches and a bit, so (c) never crosses an epoch.
    """
    from mmpretrain.config import load_config

    batch = load_config(preset, extra).data.batch_size
    shards_dir, tokenizer = make_data(folder, batch * steps + 64, image_side=96)
    shards = sorted(str(p) for p in shards_dir.glob("*.tar"))
    overrides = [preset, f"data.tokenizer={tokenizer}", f"train.cpus_per_worker={cpus_per_worker}"]
    overrides += [f"train.max_steps={steps}", *extra]
    seconds: dict[str, list[float]] = {row: [] for row in (*ROWS, "mmpretrain")}
    waits = []
    for index in range(rounds):
        for row in ROWS:
            durations = run_row(row, overrides, shards, steps)["durations"][warmup:]
            seconds[row].append(sum(durations) / len(durations))
        storage = folder / f"runs-{index}"
        rows = measure_mmpretrain(overrides, shards_dir, storage, steps, log_every)["rows"]
        per_step, wait = mmpretrain_timing(rows, warmup)
        seconds["mmpretrain"].append(per_step)
        waits.append(wait)
    plain = statistics.median(seconds["plain"])
    return [
        {
            "row": row,
            "step_s": statistics.median(values),
            "spread": (min(values), max(values)),
            "ratio": statistics.median(values) / plain,
            "data_wait": statistics.median(waits) if row == "mmpretrain" else None,
        }
        for row, values in seconds.items()
    ]


LABELS = {
    "plain": "(a) plain PyTorch loop, torch AdamW (defaults)",
    "plain_fused": "    the same, AdamW(fused=True)",
    "zero0": "(b) DeepSpeed ZeRO-0 alone, fused AdamW",
    "zero2": "(b) DeepSpeed ZeRO-2 alone, fused AdamW",
    "mmpretrain": "(c) mmpretrain train: Ray Train + ZeRO-2 + Ray Data",
}


def format_table(results: list[dict[str, Any]]) -> str:
    header = f"{'loop':<52} {'s/step':>8} {'min-max':>13} {'vs (a)':>7} {'data wait':>10}"
    lines = [header]
    for result in results:
        wait = "" if result["data_wait"] is None else f"{100 * result['data_wait']:.1f}%"
        low, high = result["spread"]
        lines.append(
            f"{LABELS[result['row']]:<52} {result['step_s']:>8.3f} {low:>6.3f}-{high:<6.3f} "
            f"{result['ratio']:>6.3f}x {wait:>10}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=60, help="steps per row, warm-up included")
    parser.add_argument("--warmup", type=int, default=20, help="steps left out of the timing")
    parser.add_argument("--log-every", type=int, default=10, help="(c)'s train.log_every")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3, help="every row this many times")
    parser.add_argument("overrides", nargs="*", help="config overrides for every row")
    parser.add_argument("--only", choices=ROWS, help=argparse.SUPPRESS)  # subprocess entry
    parser.add_argument("--overrides-json", help=argparse.SUPPRESS)
    parser.add_argument("--shards-json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.only is not None:
        result = measure_in_process(
            args.only, json.loads(args.overrides_json), json.loads(args.shards_json), args.steps
        )
        print(json.dumps(result))
        return
    if args.warmup % args.log_every or args.steps - args.warmup < 2 * args.log_every:
        parser.error("--warmup must be a multiple of --log-every and leave two log rows after it")
    with tempfile.TemporaryDirectory(prefix="mmpretrain-overhead-") as tmp:
        results = measure(
            args.preset,
            args.steps,
            args.warmup,
            args.log_every,
            args.cpus_per_worker,
            args.overrides,
            Path(tmp),
            args.rounds,
        )
    print(
        f"preset {args.preset}, 1 worker, {args.steps - args.warmup} timed steps after "
        f"{args.warmup}, median of {args.rounds} interleaved rounds, {os.cpu_count()} CPUs; "
        f"{THREADS_NOTE}"
    )
    print(format_table(results))


if __name__ == "__main__":
    main()
