"""Saving and restoring a run: every rank's DeepSpeed shard plus the TrainState.

Each rank writes its own shard files into a private temporary folder and hands it to
``ray.train.report``; Ray merges the rank folders into one checkpoint under
``storage_path/run_name``. Loading reads the same merged folder on every rank.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import ray.train

from mmpretrain.train.state import TrainState

STATE_FILE = "train_state.json"


def checkpoint_tag(step: int) -> str:
    return f"step_{step:08d}"


def save_and_report(engine: Any, state: TrainState, metrics: dict[str, Any], rank: int) -> None:
    """Collective: every rank must call it at the same step."""
    with tempfile.TemporaryDirectory(prefix="mmpretrain-ckpt-") as folder:
        tag = checkpoint_tag(state.step)
        engine.save_checkpoint(folder, tag=tag, client_state={"train_state": state.state_dict()})
        if rank == 0:
            (Path(folder) / STATE_FILE).write_text(json.dumps(state.state_dict()))
        ray.train.report(
            {**metrics, "step": state.step},
            checkpoint=ray.train.Checkpoint.from_directory(folder),
            checkpoint_dir_name=f"checkpoint_{tag}",
        )


def restore(engine: Any, checkpoint: ray.train.Checkpoint) -> TrainState:
    """Loads weights, optimizer and scheduler into ``engine`` and returns the TrainState."""
    with checkpoint.as_directory() as folder:
        latest = Path(folder) / "latest"
        if not latest.is_file():
            raise FileNotFoundError(
                f"checkpoint {checkpoint.path} has no DeepSpeed 'latest' file;"
                " it is not a checkpoint written by mmpretrain"
            )
        tag = latest.read_text().strip()
        load_path, client_state = engine.load_checkpoint(
            folder, tag=tag, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {checkpoint.path} (tag {tag})")
    state = TrainState()
    state.load_state_dict(client_state["train_state"])
    return state
