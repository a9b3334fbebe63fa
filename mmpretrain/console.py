"""One status line that updates in place while a long step runs, drawn only on a terminal.

Training and evaluation run in Ray workers, whose output reaches the driver line by line with a
prefix, so an updating line cannot come from them: the driver draws it, from what rank 0 writes
to ``metrics.jsonl``, or from the clock while a job without progress records runs. When stdout
is not a terminal (CI, job logs, pipes) nothing is drawn; the workers' log lines stay.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any


def console(line: str) -> None:
    """Writes a line to stdout once.

    Ray Train patches ``print`` in workers to tee into its logger as well, which the driver then
    shows twice; writing to the stream directly keeps one copy.
    """
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


class LiveLine:
    """``update`` redraws the line; ``close`` ends it with a newline (if anything was drawn)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.enabled = self.stream.isatty()
        self._drawn = False

    def update(self, text: str) -> None:
        if not self.enabled:
            return
        width = shutil.get_terminal_size((100, 20)).columns - 1
        self.stream.write("\r" + text[:width] + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def loss_summary(values: dict[str, Any]) -> str:
    """``itc 3.478 itm 0.635 ...``: each objective's loss, as the progress lines show them."""
    return " ".join(
        f"{k.removeprefix('loss_')} {v:.3f}" for k, v in values.items() if k.startswith("loss_")
    )


def training_status(row: dict[str, Any], max_steps: int, first: dict[str, Any] | None) -> str:
    """``step 40/200 | loss 7.333 (itc 3.478 ...) | 32.5 samples/s | ETA 5m15s``."""
    text = f"train step {row['step']}/{max_steps} | loss {row['loss']:.3f} ({loss_summary(row)})"
    if "samples_per_second" in row:
        text += f" | {row['samples_per_second']:.1f} samples/s"
    if first is not None and row["step"] > first["step"]:
        per_step = (row["time"] - first["time"]) / (row["step"] - first["step"])
        text += f" | ETA {duration(per_step * (max_steps - row['step']))}"
    return text


class Ticker:
    """Redraws a line every ``interval`` seconds from a thread, until the ``with`` block ends.

    ``status`` returns the text, or None to leave the line as it is.
    """

    def __init__(self, status, interval: float = 0.5, stream: IO[str] | None = None) -> None:
        self.status, self.interval = status, interval
        self.line = LiveLine(stream)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            text = self.status()
            if text is not None:
                self.line.update(text)

    def __enter__(self) -> Ticker:
        if self.line.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.line.close()


class TrainingWatch:
    """The status of a run from the new rows of its ``metrics.jsonl`` (rank 0 writes them)."""

    def __init__(self, metrics: Path, max_steps: int) -> None:
        self.metrics, self.max_steps = metrics, max_steps
        self._offset = metrics.stat().st_size if metrics.is_file() else 0
        self._first: dict[str, Any] | None = None
        self._last: dict[str, Any] | None = None
        self._started = time.monotonic()

    def __call__(self) -> str:
        rows = []
        if self.metrics.is_file():
            with self.metrics.open() as handle:
                handle.seek(self._offset)
                for line in handle:
                    if not line.endswith("\n"):  # being written: read it next time
                        break
                    self._offset += len(line.encode())
                    rows.append(json.loads(line))
        if rows:
            self._first = self._first or rows[0]
            self._last = rows[-1]
        if self._last is None:
            waited = duration(time.monotonic() - self._started)
            return f"train: starting workers and data ({waited})"
        return training_status(self._last, self.max_steps, self._first)


def elapsed_status(label: str):
    """A status for jobs without progress records: what runs and for how long."""
    started = time.monotonic()
    return lambda: f"{label} ({duration(time.monotonic() - started)})"
