"""``train.record_sample_keys``: which samples each step trained on, written as it happens.

An audit of the data order: it shows that a resumed epoch neither repeats nor skips a sample,
and which samples a bad step saw. Lines are flushed one step at a time, so a killed worker
leaves a log that is whole up to its last step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

FOLDER = "sample_keys"


class SampleKeyLog:
    def __init__(self, run_dir: Path, rank: int) -> None:
        folder = run_dir / FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        # One file per worker process: restarts and object-store copies never collide.
        self.path = folder / f"rank-{rank}-{os.getpid()}.tsv"
        self._handle = self.path.open("a")

    def write(self, step: int, keys: Iterable[str]) -> None:
        self._handle.writelines(f"{step}\t{key}\n" for key in keys)
        self._handle.flush()


def read_sample_keys(run_dir: Path) -> list[tuple[int, str]]:
    """Every (step, key) line of every rank of a run."""
    rows = []
    for path in sorted((run_dir / FOLDER).glob("rank-*.tsv")):
        for line in path.read_text().splitlines():
            step, key = line.split("\t")
            rows.append((int(step), key))
    return rows
