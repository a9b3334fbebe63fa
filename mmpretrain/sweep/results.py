"""What a sweep directory says about its trials: one ranked row per trial, and ``best.yaml``.

Read from the files alone (``sweep.yaml``, each trial's ``config.yaml``, ``eval.jsonl``,
``metrics.jsonl``, ``status.json``, ``lineage.jsonl``), never from Tune's pickles or a Ray
session: a sweep copied to a laptop, or one whose driver was killed, still has its table.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.config import ConfigError, ObserveConfig, load_config
from mmpretrain.errors import SweepError
from mmpretrain.storage import by_step, read_jsonl
from mmpretrain.sweep.spec import DEFAULT_METRIC

SPEC_FILE = "sweep.yaml"
BEST_FILE = "best.yaml"
CONFIG_FILE = "config.yaml"
EVAL_FILE = "eval.jsonl"
METRICS_FILE = "metrics.jsonl"
STATUS_FILE = "status.json"
LINEAGE_FILE = "lineage.jsonl"
NOT_TRIALS = ("tokenizer",)  # folders the driver writes beside the trials
UNFINISHED = "unfinished"  # no status.json: pending, running, or its driver was killed
DASH = "–"

Row = dict[str, Any]


@dataclass(frozen=True)
class Clone:
    """One population-based-training exploit: this trial took ``cloned_from``'s checkpoint of
    ``source_step`` at ``step`` and went on with ``new`` instead of ``old``."""

    step: int
    cloned_from: str
    source_step: int
    old: dict[str, Any]
    new: dict[str, Any]

    def text(self) -> str:
        return f"cloned from {self.cloned_from} at step {self.step}"


@dataclass(frozen=True)
class Trial:
    name: str
    folder: Path
    values: dict[str, Any]  # the searched keys, as the trial ended with them
    steps: int
    max_steps: int | None
    best: float | None  # the sweep metric's best value over the trial's evaluations
    best_step: int | None
    final: float | None  # its last evaluation's value
    status: str  # finished | stopped early | errored | unfinished
    error: str | None  # an errored trial's last error line
    lineage: tuple[Clone, ...] = ()
    evals: list[Row] = field(default_factory=list, repr=False)  # eval.jsonl, by step


@dataclass(frozen=True)
class SweepResults:
    folder: Path
    name: str
    metric: str
    mode: str  # max | min
    keys: tuple[str, ...]  # the searched config keys, in the spec's order
    trials: list[Trial]  # best first; never-evaluated trials last

    @property
    def best(self) -> Trial | None:
        return self.trials[0] if self.trials and self.trials[0].best is not None else None


def read_sweep(sweep_dir: str | Path) -> SweepResults:
    """Every trial of the sweep in ``sweep_dir``, ranked best first by the sweep's metric."""
    folder = Path(sweep_dir).expanduser().resolve()
    spec_path = folder / SPEC_FILE
    if not spec_path.is_file():
        raise SweepError(
            f"{folder} is not a sweep directory: it has no {SPEC_FILE} (point at "
            "train.storage_path/<sweep name>, the folder `mmpretrain sweep` wrote)"
        )
    spec = _read_yaml(spec_path)
    name = str(spec.get("name") or folder.name)
    metric = str(spec.get("metric") or DEFAULT_METRIC)
    mode = str(spec.get("mode") or "max")
    space = spec.get("space") or {}
    keys = tuple(str(key) for key in space) if isinstance(space, dict) else ()

    folders = sorted(
        path
        for path in folder.iterdir()
        if path.is_dir() and path.name.startswith(f"{name}_") and path.name not in NOT_TRIALS
    )
    if not folders:
        raise SweepError(
            f"sweep {name!r} in {folder} has no trials yet (no {name}_* folder); a sweep that "
            "was just started writes them as its trials begin"
        )
    trials = [_read_trial(path, keys, metric, mode) for path in folders]
    return SweepResults(folder, name, metric, mode, keys, rank(trials, mode))


def rank(trials: Sequence[Trial], mode: str) -> list[Trial]:
    """Best first by ``mode``; trials that never evaluated last; ties by name (stable)."""
    sign = -1.0 if mode == "max" else 1.0
    return sorted(
        trials,
        key=lambda t: (t.best is None, sign * t.best if t.best is not None else 0.0, t.name),
    )


def _read_trial(folder: Path, keys: tuple[str, ...], metric: str, mode: str) -> Trial:
    config_path = folder / CONFIG_FILE
    config = _read_yaml(config_path) if config_path.is_file() else {}
    lineage = tuple(_clone(row, folder) for row in read_jsonl(folder / LINEAGE_FILE))
    lineage = tuple(sorted(lineage, key=lambda clone: clone.step))  # newest last
    values = {key: dotted_value(config, key) for key in keys}
    for clone in lineage:  # what the trial ended with, should config.yaml predate a clone
        values.update({key: value for key, value in clone.new.items() if key in values})

    evals = by_step(read_jsonl(folder / EVAL_FILE))
    scored = [(int(row["step"]), float(row[metric])) for row in evals if metric in row]
    best = best_step = final = None
    if scored:
        pick = max if mode == "max" else min
        best = pick(value for _, value in scored)
        best_step = next(step for step, value in scored if value == best)  # first reached
        final = scored[-1][1]

    logged = by_step(read_jsonl(folder / METRICS_FILE))
    status_path = folder / STATUS_FILE
    state = _read_json(status_path) if status_path.is_file() else {}
    reported_steps = [
        int(logged[-1]["step"]) if logged else 0,
        int(evals[-1]["step"]) if evals else 0,
        int(state.get("step") or 0),
    ]
    max_steps = dotted_value(config, "train.max_steps")
    return Trial(
        name=folder.name,
        folder=folder,
        values=values,
        steps=max(reported_steps),
        max_steps=int(max_steps) if isinstance(max_steps, int) else None,
        best=best,
        best_step=best_step,
        final=final,
        status=str(state.get("status") or UNFINISHED),
        error=_last_line(state.get("error")),
        lineage=lineage,
        evals=evals,
    )


def format_table(results: SweepResults) -> str:
    """One aligned row per trial, best first, under a header naming the metric."""
    lineage = any(trial.lineage for trial in results.trials)
    header = [
        "trial",
        *results.keys,
        "steps",
        f"best {results.metric}",
        "@step",
        "final",
        *(["lineage"] if lineage else []),
        "status",
    ]
    rows = [header]
    for trial in results.trials:
        status = trial.status + (f": {trial.error}" if trial.error else "")
        rows.append(
            [
                trial.name,
                *(_cell(trial.values.get(key)) for key in results.keys),
                f"{trial.steps}/{trial.max_steps if trial.max_steps is not None else '?'}",
                _cell(trial.best),
                _cell(trial.best_step),
                _cell(trial.final),
                *(["; ".join(c.text() for c in trial.lineage) or DASH] if lineage else []),
                status,
            ]
        )
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    better = "higher" if results.mode == "max" else "lower"
    title = (
        f"sweep {results.name}: {len(results.trials)} trial(s) ranked by held-out "
        f"{results.metric} ({better} is better)"
    )
    return "\n".join([title, "", *lines])


def to_json(results: SweepResults) -> list[Row]:
    """The table as data (``--json``): every row with its values, status and full lineage."""
    return [
        {
            "trial": trial.name,
            "dir": str(trial.folder),
            "values": trial.values,
            "steps": trial.steps,
            "max_steps": trial.max_steps,
            "metric": results.metric,
            "mode": results.mode,
            "best": trial.best,
            "best_step": trial.best_step,
            "final": trial.final,
            "status": trial.status,
            "error": trial.error,
            "lineage": [
                {
                    "step": clone.step,
                    "cloned_from": clone.cloned_from,
                    "source_step": clone.source_step,
                    "old": clone.old,
                    "new": clone.new,
                }
                for clone in trial.lineage
            ],
        }
        for trial in results.trials
    ]


def write_best(sweep_dir: str | Path, trials: Sequence[Trial]) -> Path:
    """``<sweep_dir>/best.yaml``: the best trial's full config as a fresh run of its own.

    ``trials`` ranked best first (``read_sweep``). The copy is named ``<sweep>-best`` beside
    the sweep directory, belongs to no sweep and serves metrics on the default port, so
    ``mmpretrain train --config best.yaml`` trains it from step 0 instead of resuming a trial.
    """
    folder = Path(sweep_dir).expanduser().resolve()
    best = trials[0] if trials and trials[0].best is not None else None
    if best is None:
        raise SweepError(
            f"no trial in {folder} has evaluated yet, so there is no best trial and "
            f"{BEST_FILE} was not written (trials evaluate every eval.every steps)"
        )
    config_path = best.folder / CONFIG_FILE
    if not config_path.is_file():
        raise SweepError(
            f"the best trial {best.name} has no {CONFIG_FILE}; cannot write {BEST_FILE}"
        )
    name = str(_read_yaml(folder / SPEC_FILE).get("name") or folder.name)
    fresh = {
        "train.run_name": f"{name}-best",
        "train.storage_path": str(folder.parent),
        "observe.sweep": None,
        "observe.metrics_port": ObserveConfig().metrics_port,
        # Where and how the sweep ran is not part of the trial's recipe: the cluster it used
        # may be gone, and the CPU share it gave each trial's data was for running beside
        # other trials (mmpretrain train --address says where this one runs).
        "cluster.address": None,
        "cluster.num_cpus": None,
        "data.ingest_cpus": None,
        # as the trial ended with them (a PBT trial's last clone); None: not in its config
        **{key: value for key, value in best.values.items() if value is not None},
    }
    try:
        cfg = load_config(config_path, values=fresh)
    except ConfigError as exc:
        raise SweepError(f"{config_path} is not a loadable run config: {exc}") from exc
    path = folder / BEST_FILE
    path.write_text(
        f"# {best.name}, best {_cell(best.best)} held-out value of the sweep's metric at step "
        f"{best.best_step}.\n# Train it as a fresh run: mmpretrain train --config {path}\n"
        + cfg.to_yaml()
    )
    try:
        load_config(path)  # what `mmpretrain train --config best.yaml` will do first
    except ConfigError as exc:
        path.unlink()
        raise SweepError(f"{BEST_FILE} from {best.name} does not load: {exc}") from exc
    return path


def show_results(sweep_dir: str | Path, as_json: bool = False) -> str:
    """``mmpretrain sweep results DIR``: the table (or JSON), writing ``best.yaml`` on the way
    whenever a trial has evaluated; the text names the file, or says why there is none."""
    results = read_sweep(sweep_dir)
    try:
        best = write_best(results.folder, results.trials)
        note = f"best config: {best}\n  train it: mmpretrain train --config {best}"
    except SweepError as exc:
        note = f"note: {exc}"
    if as_json:
        return json.dumps(to_json(results), indent=2)
    return f"{format_table(results)}\n\n{note}"


def _cell(value: Any) -> str:
    if value is None:
        return DASH
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def dotted_value(tree: Any, key: str) -> Any:
    """``tree[a][b]`` for ``key`` ``a.b`` in a config read as plain data; None if absent."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def _last_line(error: Any) -> str | None:
    lines = [line.strip() for line in str(error or "").splitlines() if line.strip()]
    return lines[-1] if lines else None


def _clone(row: Row, folder: Path) -> Clone:
    try:
        return Clone(
            step=int(row["step"]),
            cloned_from=str(row["cloned_from"]),
            source_step=int(row.get("source_step", row["step"])),
            old=dict(row.get("old") or {}),
            new=dict(row.get("new") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SweepError(f"{folder / LINEAGE_FILE}: a row without step/cloned_from: {row}") from exc


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise SweepError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SweepError(f"{path} does not hold a mapping")
    return data


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SweepError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise SweepError(f"{path} does not hold a JSON object")
    return data
