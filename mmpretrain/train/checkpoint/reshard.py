"""Resuming a ZeRO checkpoint on a different number of workers or at another ZeRO stage.

ZeRO-1/2/3 checkpoints hold the optimizer state (and under ZeRO-3 the weights) cut into one
piece per rank of the world that saved them, and DeepSpeed refuses to load them into another
world size. DeepSpeed's universal checkpoint format keeps each parameter's fp32 weights and
optimizer moments whole, and loads into any world size and stage. So when the world size or
stage changed, rank 0 converts the chosen checkpoint once (into ``run_dir/universal/``, kept
for the next restart) and every rank loads the converted copy. The data position needs no
conversion: it is global (see ``position.py``).

A checkpoint in an object store is first copied to each rank's local disk (DeepSpeed loads
from local files); a conversion then happens on every rank, into a local folder of its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mmpretrain import distributed
from mmpretrain.errors import CheckpointError
from mmpretrain.storage import Folder
from mmpretrain.train.checkpoint.manifest import MANIFEST

UNIVERSAL_DIR = "universal"
CONVERTED_MARKER = "converted.json"  # written last: a conversion cut short is redone
MODEL_STATES = "mp_rank_00_model_states.pt"


@dataclass(frozen=True)
class ResumeSource:
    """What ``engine.load_checkpoint`` is pointed at."""

    checkpoint: Folder  # the checkpoint chosen for resume
    load_dir: Path  # a local copy of it (or it, when local), or its universal conversion
    tag: str
    universal: bool


def plan_resume(
    checkpoint: Folder, world: int, zero_stage: int, run_dir: Path, rank: int
) -> ResumeSource:
    """Collective: decides whether ``checkpoint`` needs converting and, if so, converts it.

    ``run_dir`` is the run's local folder, where a conversion of a local checkpoint is kept.
    """
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    saved_world, saved_stage = int(manifest["world_size"]), int(manifest["zero_stage"])
    tag = (checkpoint / "latest").read_text().strip()
    if checkpoint.is_local:
        local, target, converter = checkpoint.local_path, run_dir / UNIVERSAL_DIR, rank == 0
    else:
        scratch = Path(tempfile.mkdtemp(prefix="mmpretrain-resume-"))
        local = checkpoint.download(scratch / checkpoint.name)
        target, converter = scratch / UNIVERSAL_DIR, True
    if (saved_world, saved_stage) == (world, zero_stage) or saved_stage == zero_stage == 0:
        return ResumeSource(checkpoint, local, tag, universal=False)
    if saved_stage == 0 or zero_stage == 0:
        raise CheckpointError(
            f"{checkpoint.name} was saved at ZeRO stage {saved_stage} and the run now asks for "
            f"train.zero_stage={zero_stage}; a checkpoint moves between ZeRO stages 1-3 (and "
            f"any world size), but not to or from stage 0: set train.zero_stage={saved_stage}"
        )
    target = target / checkpoint.name
    failure: str | None = None
    if converter and not (target / CONVERTED_MARKER).is_file():
        try:
            convert_to_universal(local, tag, target)
        except Exception as exc:  # reported to every rank below, then raised
            failure = f"{type(exc).__name__}: {exc}"
    failures = [f for f in distributed.gather_objects(failure) if f is not None]
    if failures:
        raise CheckpointError(
            f"converting {checkpoint} (world size {saved_world}, ZeRO stage {saved_stage}) to "
            f"DeepSpeed's universal format for world size {world} failed: {failures[0]}"
        )
    return ResumeSource(checkpoint, target, tag, universal=True)


def convert_to_universal(checkpoint: Path, tag: str, target: Path) -> None:
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    ds_to_universal(
        argparse.Namespace(
            input_folder=str(checkpoint / tag),
            output_folder=str(target / tag),
            num_extract_workers=1,
            num_merge_workers=1,
            keep_temp_folder=False,
            strict=True,
            # Megatron-style metadata our model has no use for (no tensor or pipeline cuts).
            inject_missing_state=True,
        )
    )
    (target / "latest_universal").write_text(tag)
    (target / CONVERTED_MARKER).write_text(json.dumps({"source": str(checkpoint), "tag": tag}))


def restore_module_extras(engine: Any, source: ResumeSource) -> None:
    """Loads what the universal format leaves out: buffers and frozen parameters.

    The universal loader restores only the parameters the optimizer owns; BatchNorm running
    statistics and the momentum (EMA) encoder would silently restart from their initial values.
    The saved module state has them whole (below ZeRO-3, where parameters are not partitioned).
    """
    saved = torch.load(
        source.load_dir / source.tag / MODEL_STATES, map_location="cpu", weights_only=False
    )["module"]
    module = engine.module
    trained = {name for name, param in module.named_parameters() if param.requires_grad}
    extras = {name: tensor for name, tensor in module.state_dict().items() if name not in trained}
    with torch.no_grad():
        for name, tensor in extras.items():
            if name in saved and saved[name].shape == tensor.shape:
                tensor.copy_(saved[name].to(tensor.device, tensor.dtype))
