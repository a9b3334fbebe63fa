"""Saving and restoring a run: every rank's DeepSpeed shard, the TrainState and a manifest.

Each rank writes its own shard files into a private temporary folder and hands it to
``ray.train.report``; Ray merges the rank folders into one checkpoint under
``storage_path/run_name``. Rank 0 adds the manifest (see ``manifest.py``) listing every rank's
files with sizes and checksums. A resume takes the newest checkpoint whose manifest checks out,
chosen by rank 0 and broadcast, and says which newer ones it passed over and why.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any

import ray.train

from mmpretrain import distributed
from mmpretrain.console import console
from mmpretrain.errors import CheckpointError
from mmpretrain.storage import Folder
from mmpretrain.train.checkpoint.manifest import (
    STATE_FILE,
    describe_files,
    newest_complete,
    prune_checkpoints,
    set_aside,
    write_manifest,
)
from mmpretrain.train.checkpoint.reshard import ResumeSource, restore_module_extras
from mmpretrain.train.state import TrainState


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def config_digest(config_yaml: str) -> str:
    return hashlib.sha256(config_yaml.encode()).hexdigest()[:16]


def _all_files(files: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every rank's file list merged into one (collective)."""
    merged: dict[str, dict[str, Any]] = {}
    for part in distributed.gather_objects(files):
        merged.update(part)
    return merged


def save_and_report(
    engine: Any,
    state: TrainState,
    metrics: dict[str, Any],
    rank: int,
    facts: dict[str, Any],
    storage: Folder,
    keep: int | None,
) -> int:
    """Collective: every rank must call it at the same step. Returns the bytes this rank wrote.

    ``facts`` (world size, ZeRO stage, config digest) go into the manifest with the step. With
    ``keep`` set, rank 0 then deletes checkpoints older than the newest ``keep`` complete ones
    (done here rather than by Ray, which would count incomplete checkpoints as kept ones).
    """
    with tempfile.TemporaryDirectory(prefix="mmpretrain-ckpt-") as folder:
        tag = checkpoint_tag(state.step)
        engine.save_checkpoint(folder, tag=tag, client_state={"train_state": state.state_dict()})
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(state.state_dict()))
        own = describe_files(Path(folder))  # hash here, in parallel on all ranks
        written = sum(entry["size"] for entry in own.values())
        files = _all_files(own)
        if rank == 0:  # last file of the folder: the checkpoint is complete once it is valid
            write_manifest(Path(folder), files, {**facts, **state.summary()})
        ray.train.report(
            {**metrics, "step": state.step},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"checkpoint_{tag}",
        )
    if keep is not None:
        # report() uploads synchronously, so once every rank is past it the new checkpoint is
        # whole and counts among the kept ones (without the barrier it could still look
        # incomplete to rank 0, and one checkpoint too many would stay).
        distributed.barrier()
        if rank == 0:
            prune_checkpoints(storage, keep)
    return written


def choose_resume_checkpoint(storage: Folder, rank: int) -> Folder | None:
    """The newest complete checkpoint of the run (collective: rank 0 checks, all agree).

    Read from the run directory rather than from Ray's record of the run, so a run whose
    driver was killed, or whose newest checkpoint is damaged, still resumes from the best one.
    """
    chosen_path: str | None = None
    if rank == 0:
        chosen, skipped = newest_complete(storage)
        for status in skipped:
            fallback = f"resuming from {chosen.path.name}" if chosen else "starting afresh"
            moved = set_aside(status)  # frees the name for when this step is saved again
            console(
                f"warning: checkpoint {status.path.name} is incomplete ({status.reason}); "
                f"{fallback} (kept as {moved.name})"
            )
        chosen_path = str(chosen.path) if chosen else None
    chosen_path = distributed.broadcast_from_rank0(chosen_path)
    return Folder.of(chosen_path) if chosen_path else None


def restore(engine: Any, source: ResumeSource) -> TrainState:
    """Loads weights, optimizer and scheduler into ``engine`` and returns the TrainState."""
    load_path, client_state = engine.load_checkpoint(
        str(source.load_dir),
        tag=source.tag,
        load_optimizer_states=True,
        load_lr_scheduler_states=True,
    )
    if load_path is None:
        raise CheckpointError(f"DeepSpeed could not load {source.load_dir} (tag {source.tag})")
    if source.universal:
        restore_module_extras(engine, source)
    state = TrainState()
    state.load_state_dict(client_state["train_state"])
    return state
