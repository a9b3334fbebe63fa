"""Rank 0's view of the run: a progress line on the console and ``metrics.jsonl`` on disk."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from mmpretrain.console import console, duration, loss_summary


class ProgressLog:
    def __init__(self, run_dir: Path, max_steps: int, start_step: int, print_lines: bool = True):
        """``print_lines`` False when the driver draws a live line from ``metrics.jsonl``."""
        self.print_lines = print_lines
        self.path = run_dir / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_steps = max_steps
        self.last_time = time.monotonic()
        self.last_step = start_step
        self.last_samples: int | None = None

    def log(self, step: int, samples_seen: int, values: dict[str, float]) -> dict[str, Any]:
        """Appends one metrics row and prints the progress line; returns the row."""
        now = time.monotonic()
        elapsed = now - self.last_time
        steps_done = step - self.last_step
        samples_done = samples_seen - (
            self.last_samples if self.last_samples is not None else samples_seen
        )
        row: dict[str, Any] = {
            "step": step,
            "time": time.time(),
            "samples_seen": samples_seen,
            **{k: float(f"{float(v):.6g}") for k, v in values.items()},
        }
        if self.last_samples is not None and elapsed > 0:
            row["samples_per_second"] = round(samples_done / elapsed, 2)
        with self.path.open("a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self.print_lines:
            eta = elapsed / steps_done * (self.max_steps - step) if steps_done > 0 else 0.0
            speed = (
                f"{row['samples_per_second']:.1f} samples/s"
                if "samples_per_second" in row
                else "warming up"
            )
            console(
                f"step {step}/{self.max_steps} | loss {values['loss']:.3f} "
                f"({loss_summary(values)}) | lr {values.get('lr', 0.0):.2e} | {speed} | "
                f"ETA {duration(eta)}"
            )
        self.last_time, self.last_step, self.last_samples = now, step, samples_seen
        return row
