"""One sweep trial: a whole mmpretrain run inside a Ray Tune trial.

The trial function builds the run config from the sweep's base and the trial's values and
calls ``run_training`` like any other way in. Held-out evaluations reach Tune through a relay:
a Ray Train callback (in Train's controller) puts each one on a queue, and this function,
running in Tune's trial thread, reports it to Tune. That is what lets a report carry a Tune
checkpoint, which population-based training needs and Ray's ``TuneReportCallback`` cannot
give. The Tune checkpoint is only a pointer (trial, run directory, step); the weights stay in
the run directory, written and checked by the same code as any run's.

A trial started from another trial's pointer is a PBT clone: the other trial's newest complete
checkpoint is copied into this trial's run directory, replacing its own, and the run resumes
from it with this trial's (perturbed) values. Everything else (restarts after a failure, a
restored sweep) resumes from the trial's own run directory, as a re-typed command would.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.train import UserCallback
from ray.util.queue import Queue

from mmpretrain.config import RunConfig, config_from_dict
from mmpretrain.console import console
from mmpretrain.errors import CheckpointError
from mmpretrain.storage import Folder
from mmpretrain.sweep.results import dotted_value
from mmpretrain.train.checkpoint.manifest import (
    CheckpointStatus,
    check_checkpoint,
    list_checkpoints,
)
from mmpretrain.train.launch import run_training

POINTER_FILE = "pointer.json"
LINEAGE_FILE = "lineage.jsonl"
ERROR_FILE = "trial_error.txt"  # what the run raised, whole
CLONE_ATTEMPTS = 3  # the source trial may prune the checkpoint being copied; take its next


@dataclass(frozen=True)
class TrialPlan:
    """What the sweep driver hands every trial (through ``tune.with_parameters``)."""

    sweep: str
    sweep_dir: str  # absolute: storage_path/<sweep>; trials run in storage_path/<sweep>/<trial>
    base: dict[str, Any]  # the base RunConfig as a dict: absolute paths, tokenizer resolved
    metric: str
    pointers: bool  # report Tune checkpoints (pointers), for population-based training


def trial_config(plan: TrialPlan, values: dict[str, Any], trial_name: str) -> RunConfig:
    """The trial's run: the base with its searched values, in its own run directory."""
    return config_from_dict(plan.base).with_values(
        {
            **values,
            "train.storage_path": plan.sweep_dir,
            "train.run_name": trial_name,
            # Two trials on one node cannot share a port; Ray's node endpoint serves them all.
            "observe.metrics_port": None,
            "observe.sweep": plan.sweep,
        }
    )


class EvaluationRelay(UserCallback):
    """Runs in Ray Train's controller: passes each held-out evaluation on to the trial."""

    def __init__(self, queue: Queue, metric: str):
        self.queue, self.metric = queue, metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any):
        if self.metric in metrics[0]:  # an evaluation; checkpoint reports carry the loss only
            self.queue.put(dict(metrics[0]))


def run_trial(values: dict[str, Any], plan: TrialPlan) -> None:
    """Tune's trial function. Raises what the run raised, so Tune records the trial's error."""
    name = tune.get_context().get_trial_name()
    cfg = trial_config(plan, values, name)
    source = tune.get_checkpoint()
    if source is not None:
        with source.as_directory() as folder:
            pointer = json.loads((Path(folder) / POINTER_FILE).read_text())
        if pointer["trial"] != name:
            adopt_clone(cfg, pointer, sorted(values))

    relay = Queue(actor_options={"num_cpus": 0})
    failure: list[BaseException] = []

    def train() -> None:
        try:
            run_training(cfg, callbacks=[EvaluationRelay(relay, plan.metric)])
        except BaseException as exc:  # handed to Tune's thread below
            failure.append(exc)
        finally:
            relay.put(None)  # after every evaluation the controller put

    worker = threading.Thread(target=train, name=f"run {name}", daemon=True)
    worker.start()
    final = None
    while (result := relay.get()) is not None:
        if result["step"] >= cfg.train.max_steps:
            final = result  # reported once the run has shut down (see below)
            continue
        _report(result, cfg, name, plan.pointers)
    worker.join()
    if failure:
        # Written before Tune sees the error: its own error file may not exist yet when the
        # sweep's console and status.json want the message.
        (cfg.run_dir / ERROR_FILE).write_text(str(failure[0]))
        raise failure[0]
    # Tune stops a trial whose last result reaches the scheduler's end (ASHA's max_t) by
    # killing its process; reported earlier, that kill would cut Ray Train's shutdown short
    # and leave the run's placement group to Train's cleaner.
    if final is not None:
        _report(final, cfg, name, plan.pointers)


def _report(result: dict[str, Any], cfg: RunConfig, name: str, pointer: bool) -> None:
    if not pointer:
        tune.report(result)
        return
    with tempfile.TemporaryDirectory(prefix="mmpretrain-pointer-") as folder:
        record = {"trial": name, "run_dir": str(cfg.run_storage), "step": int(result["step"])}
        (Path(folder) / POINTER_FILE).write_text(json.dumps(record))
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def adopt_clone(cfg: RunConfig, pointer: dict[str, Any], keys: list[str]) -> None:
    """Makes the source trial's checkpoint (see ``_clone_source``) this trial's only one.

    This trial's own checkpoints go: PBT replaces a lagging trial's state with the leader's.
    The lineage row (which trial, which step, old and new values) is written before the run
    resumes; a restart that finds the same clone already recorded does not clone again.
    """
    own = cfg.run_storage
    lineage = cfg.run_dir / LINEAGE_FILE
    done = _read_lineage(lineage)
    if done and done[-1]["pointer"] == pointer:
        return  # restarted after this clone (driver restored): resume from own checkpoints
    source_run = Folder.of(pointer["run_dir"])
    for attempt in range(CLONE_ATTEMPTS):
        chosen = _clone_source(source_run, pointer["step"])
        if chosen is None:
            raise CheckpointError(f"{pointer['trial']} has no complete checkpoint to clone")
        for status in list_checkpoints(own, verify_checksums=False):
            status.path.delete()
        copy = chosen.path.copy_to(own / chosen.path.name)
        if check_checkpoint(copy).complete:
            break
        copy.delete()  # pruned while it was copied; take the source's next newest
        if attempt == CLONE_ATTEMPTS - 1:
            raise CheckpointError(f"could not copy a complete checkpoint of {pointer['trial']}")
    old = _config_values(cfg.run_dir / "config.yaml", keys)
    new = {key: dotted_value(cfg.to_dict(), key) for key in keys}
    row = {
        "step": chosen.step,
        "cloned_from": pointer["trial"],
        "source_step": pointer["step"],
        "old": old,
        "new": new,
        "time": time.time(),
        "pointer": pointer,
    }
    lineage.parent.mkdir(parents=True, exist_ok=True)
    with lineage.open("a") as handle:
        handle.write(json.dumps(row) + "\n")
    changes = ", ".join(f"{key} {old.get(key)!r:.8} -> {new[key]!r:.8}" for key in keys)
    console(f"{cfg.train.run_name}: cloned {pointer['trial']} at step {chosen.step} ({changes})")


def _clone_source(run: Folder, step: int) -> CheckpointStatus | None:
    """The checkpoint PBT judged (the pointer's step) while it is still complete, else the
    source's newest complete one (retention may have pruned it).

    The source trial trains on while Tune decides, so its newest checkpoint can be its last:
    a clone of that would have no steps left to train with its new values.
    """
    statuses = list_checkpoints(run, verify_checksums=False)  # the copy is verified in full
    judged = [s for s in statuses if s.step == step and s.complete]
    if judged:
        return judged[0]
    return next((s for s in statuses if s.complete), None)


def _read_lineage(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config_values(path: Path, keys: list[str]) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    return {key: dotted_value(data, key) for key in keys}
