"""What running a run as a Tune trial costs: start-up to the first step, and the share of a
short trial spent outside training steps, against a plain ``mmpretrain train`` of the same run.

Both are started as a user starts them (``python -m mmpretrain ...``, each on its own embedded
Ray) on the same synthetic shards, with the same config: the tiny preset, 1 worker, evaluation
and a checkpoint every ``--every`` steps. Every step is logged (train.log_every=1), so
metrics.jsonl gives the time of the first step and of each step after it.

    python benchmarks/sweep_overhead.py --steps 64 --every 16

Times: "to first step" from the command's start and, for the trial, also from the trial's
start (its first result's timestamp less its time_total_s: Tune stamps whole seconds, so
that column is good to about a second). "In steps" is the median step interval
times the steps (evaluations and checkpoints excluded); "outside" is the rest of the wall time:
Ray and Tune start-up, worker-group start, data warm-up, evaluations, checkpoints, shutdown.
Prints one table; record it in benchmarks/RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import cli_env

OVERRIDES = [
    "optim.warmup_steps=4",
    "train.log_every=1",
    "data.batch_size=32",
]


def _run(command: list[str], cwd: Path) -> tuple[float, float]:
    """Runs ``command``; returns its start and end wall-clock times."""
    started = time.time()
    done = subprocess.run(command, cwd=cwd, env=cli_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return started, time.time()


def _step_times(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    return [(row["step"], row["time"]) for row in rows]


def _summary(
    label: str, started: float, ended: float, run_dir: Path, every: int, trial_start: float | None
) -> dict:
    steps = _step_times(run_dir)
    intervals = [
        later - earlier
        for (_, earlier), (step, later) in itertools.pairwise(steps)
        if (step - 1) % every  # the interval after an evaluation or checkpoint step is not one
    ]
    in_steps = statistics.median(intervals) * len(steps)
    wall = ended - started
    return {
        "run": label,
        "first_step_s": steps[0][1] - started,
        "first_step_from_trial_s": (steps[0][1] - trial_start) if trial_start else None,
        "wall_s": wall,
        "in_steps_s": in_steps,
        "outside_share": 1 - in_steps / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--every", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mmpretrain-sweep-bench-") as folder:
        root = Path(folder)
        mm = [sys.executable, "-m", "mmpretrain"]
        for command in (
            ["data", "synth", "--out", "train", "--samples", "512", "--shard-size", "128"],
            ["data", "synth", "--out", "val", "--samples", "96", "--first-index", "1000000"],
            ["tokenizer", "train", "--data", "train/*.tar", "--out", "tokenizer"],
        ):
            subprocess.run([*mm, *command], cwd=root, check=True, capture_output=True)
        data = [
            f"data.train={root}/train/*.tar",
            f"data.val={root}/val/*.tar",
            f"data.tokenizer={root}/tokenizer",
            f"train.storage_path={root}/runs",
        ]
        budget = {
            "train.max_steps": args.steps,
            "eval.every": args.every,
            "checkpoint.every": args.every,
        }
        run = [*OVERRIDES, *data, f"train.num_workers={args.workers}"]
        run += [f"{key}={value}" for key, value in budget.items()]
        run += ["train.run_name=plain", "observe.metrics_port=null"]
        plain = _run([*mm, "train", *run], root)

        spec = {
            "name": "bench",
            "config": "tiny",
            "overrides": OVERRIDES,
            "resources": {"train.num_workers": args.workers},
            "budget": budget,
            "space": {"optim.lr": {"grid": [1.0e-3]}},
            "search": {"algorithm": "grid"},
        }
        (root / "bench.yaml").write_text(yaml.safe_dump(spec))
        swept = _run([*mm, "sweep", "bench.yaml", *data], root)
        trial_dir = next((root / "runs" / "bench").glob("bench_*"))
        first = json.loads((trial_dir / "result.json").read_text().splitlines()[0])
        # Tune stamps each result with whole seconds and the time since the trial began.
        trial_start = first["timestamp"] - first["time_total_s"]

        rows = [
            _summary("plain mmpretrain train", *plain, root / "runs" / "plain", args.every, None),
            _summary("sweep trial (Tune)", *swept, trial_dir, args.every, trial_start),
        ]
    print(
        f"tiny preset, {args.workers} worker(s), {args.steps} steps, evaluation and checkpoint "
        f"every {args.every}; times in seconds from the command's start"
    )
    print(
        f"{'run':<24}{'to 1st step':>12}{'from trial':>12}{'wall':>8}{'in steps':>10}{'outside':>9}"
    )
    for row in rows:
        from_trial = row["first_step_from_trial_s"]
        print(
            f"{row['run']:<24}{row['first_step_s']:>12.1f}"
            f"{(f'{from_trial:.1f}' if from_trial else '-'):>12}{row['wall_s']:>8.1f}"
            f"{row['in_steps_s']:>10.1f}{row['outside_share']:>9.0%}"
        )
    extra = rows[1]["first_step_s"] - rows[0]["first_step_s"]
    print(f"Tune's extra start-up to the first step: {extra:+.1f} s")


if __name__ == "__main__":
    main()
