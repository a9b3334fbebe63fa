"""Keeping a run's logs beside its checkpoints when the run directory is an object store.

Logs are appended line by line, which object stores cannot do, so an object-store run writes
them to a local mirror (``RunConfig.run_dir``) and copies them up at every checkpoint and at
the end. The stored copies are the truth: a run that starts or resumes first replaces its
mirror with them, so a resume on another machine, or a stale mirror, keeps the logs whole.
"""

from __future__ import annotations

from pathlib import Path

from mmpretrain.storage import Folder
from mmpretrain.train.audit import FOLDER as SAMPLE_KEYS

LOG_FILES = ("metrics.jsonl", "eval.jsonl", "eval.json")


def pull_logs(run_dir: Path, storage: Folder) -> None:
    """Rank 0, before it logs anything: the mirror takes the stored logs (or none)."""
    if storage.is_local:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in LOG_FILES:
        stored, local = storage / name, run_dir / name
        if stored.is_file():
            local.write_bytes(stored.read_bytes())
        else:
            local.unlink(missing_ok=True)


def push_logs(run_dir: Path, storage: Folder, rank: int, sample_keys: Path | None) -> None:
    """Every rank: its sample-key audit; rank 0 also the run's logs."""
    if storage.is_local:
        return
    if sample_keys is not None:
        (storage / SAMPLE_KEYS / sample_keys.name).upload_file(sample_keys)
    if rank == 0:
        for name in LOG_FILES:
            if (run_dir / name).is_file():
                (storage / name).upload_file(run_dir / name)
