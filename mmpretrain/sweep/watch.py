"""The sweep's console and its record of how each trial ended.

One line per trial event (started, evaluated, finished, stopped early, errored) with the
step, the metric and the best so far, instead of Tune's full status table. How a trial ended
goes into ``status.json`` in its run directory, which ``mmpretrain sweep results`` reads; Tune
itself records "terminated" for both a finished and an early-stopped trial.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ray import tune

from mmpretrain.console import console
from mmpretrain.sweep.trial import ERROR_FILE

STATUS_FILE = "status.json"


class SweepWatch(tune.Callback):
    def __init__(self, sweep_dir: Path, metric: str, mode: str, max_steps: int):
        self.sweep_dir, self.metric, self.mode, self.max_steps = sweep_dir, metric, mode, max_steps
        self.best: tuple[float, str] | None = None

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best[0] if self.mode == "max" else value < self.best[0]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        values = ", ".join(f"{key}={_short(value)}" for key, value in sorted(trial.config.items()))
        console(f"{trial}: started ({values})")

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        value = result.get(self.metric)
        if value is None:
            return
        if self._is_better(value):
            self.best = (value, str(trial))
        best_value, best_trial = self.best  # type: ignore[misc]
        running = sum(1 for t in trials if t.status == "RUNNING")
        console(
            f"{trial}: running  step {int(result['step'])}/{self.max_steps}  "
            f"{self.metric} {value:.3f}  best {best_value:.3f} ({best_trial})  "
            f"[{running} running, {len(trials)} trials]"
        )

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        step = int((trial.last_result or {}).get("step", 0))
        status = "finished" if step >= self.max_steps else "stopped early"
        self._record(trial, status, step, None)
        value = (trial.last_result or {}).get(self.metric)
        shown = f"  {self.metric} {value:.3f}" if value is not None else ""
        console(f"{trial}: {status} at step {step}{shown}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        step = int((trial.last_result or {}).get("step", 0))
        own = self.sweep_dir / str(trial) / ERROR_FILE
        error = own.read_text() if own.is_file() else str(trial.get_error() or "")
        lines = [line for line in error.strip().splitlines() if line.strip()]
        text = lines[-1].strip() if lines else "unknown error (see Ray's logs)"
        self._record(trial, "errored", step, text)
        console(f"{trial}: errored at step {step}: {text}")

    def _record(self, trial: Any, status: str, step: int, error: str | None) -> None:
        folder = self.sweep_dir / str(trial)
        folder.mkdir(parents=True, exist_ok=True)
        record = {"status": status, "step": step, "error": error}
        (folder / STATUS_FILE).write_text(json.dumps(record, indent=2))


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
