"""Turning what a run saved into plain model weights: run directory, checkpoint or export.

A user points ``eval`` and ``export`` at whichever they have; this module finds the newest
complete checkpoint of a run, merges ZeRO-3's per-rank shards into one state dict (ZeRO 0-2
checkpoints already hold full weights), and reads exports. It needs no process group: merging
happens on one CPU process.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from mmpretrain.config import RunConfig, load_config
from mmpretrain.errors import CheckpointError
from mmpretrain.train.checkpoint.manifest import (
    MANIFEST,
    STATE_FILE,
    check_checkpoint,
    newest_complete,
)

EXPORT_WEIGHTS = "model.safetensors"
EXPORT_CONFIG = "config.yaml"
EXPORT_TOKENIZER = "tokenizer"
ENCODER_PREFIX = "encoder."


@dataclass(frozen=True)
class WeightsSource:
    kind: str  # "checkpoint" or "export"
    path: Path  # the checkpoint folder or the export folder
    config_path: Path


def resolve_weights(path: str | Path) -> WeightsSource:
    """An export folder, a checkpoint folder, or a run folder (its newest complete checkpoint).

    A checkpoint is used only when its manifest checks out (``manifest.py``).
    """
    folder = Path(path).expanduser().resolve()
    if not folder.is_dir():
        raise CheckpointError(f"--checkpoint: {str(path)!r} is not a directory")
    if (folder / EXPORT_WEIGHTS).is_file():
        return WeightsSource("export", folder, folder / EXPORT_CONFIG)
    if (folder / MANIFEST).is_file() or (folder / "latest").is_file():
        status = check_checkpoint(folder)
        if not status.complete:
            raise CheckpointError(f"checkpoint {folder} is incomplete: {status.reason}")
        return WeightsSource("checkpoint", folder, folder.parent / "config.yaml")
    chosen, skipped = newest_complete(folder)
    if chosen is not None:
        return WeightsSource("checkpoint", chosen.path.local_path, folder / "config.yaml")
    reasons = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped)
    raise CheckpointError(
        f"--checkpoint: {str(path)!r} holds no complete checkpoint and no export "
        f"({EXPORT_WEIGHTS}){': ' + reasons if reasons else ''}"
    )


def source_config(source: WeightsSource, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """The run config saved beside the weights, plus overrides; local paths made absolute."""
    if not source.config_path.is_file():
        raise CheckpointError(f"{source.path} has no {source.config_path.name} beside it")
    cfg = load_config(source.config_path, overrides)
    if source.kind == "export":  # the tokenizer travels inside the export
        tokenizer = str(source.path / EXPORT_TOKENIZER)
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, tokenizer=tokenizer))
    return cfg.with_absolute_paths()


def _checkpoint_tag_dir(folder: Path) -> Path:
    tag = (folder / "latest").read_text().strip()
    tag_dir = folder / tag
    if not tag_dir.is_dir():
        raise CheckpointError(f"checkpoint {folder} names tag {tag!r} but has no such folder")
    return tag_dir


def load_task_state(folder: Path) -> dict[str, torch.Tensor]:
    """Full fp32 state dict of the training task saved in a DeepSpeed checkpoint folder."""
    tag_dir = _checkpoint_tag_dir(folder)
    try:
        if any(tag_dir.glob("zero_pp_rank_*_mp_rank_*_model_states.pt")):  # ZeRO-3 shards
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            return dict(get_fp32_state_dict_from_zero_checkpoint(str(folder), tag=tag_dir.name))
        model_states = torch.load(
            tag_dir / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )
        return dict(model_states["module"])
    except CheckpointError:
        raise
    except Exception as exc:  # a torn or foreign file: say which checkpoint, not a pickle trace
        raise CheckpointError(f"checkpoint {folder} is unreadable: {exc}") from exc


def load_encoder_state(source: WeightsSource) -> dict[str, torch.Tensor]:
    """The encoder's weights (no training-only heads, no momentum copy), fp32 on CPU."""
    if source.kind == "export":
        from safetensors.torch import load_file

        return load_file(source.path / EXPORT_WEIGHTS)
    state = load_task_state(source.path)
    encoder = {
        name[len(ENCODER_PREFIX) :]: tensor.float() if tensor.is_floating_point() else tensor
        for name, tensor in state.items()
        if name.startswith(ENCODER_PREFIX)
    }
    if not encoder:
        raise CheckpointError(f"checkpoint {source.path} holds no encoder weights")
    return encoder


def checkpoint_step(source: WeightsSource) -> int | None:
    if source.kind != "checkpoint":
        return None
    return int(json.loads((source.path / STATE_FILE).read_text())["step"])
