"""Sweep specs (``tune/*.yaml``): read and checked whole before any Ray call.

A spec names a base run config (preset or YAML path plus dotted overrides), a search space over
dotted config keys, a searcher, a scheduler, the metric, and what each trial may use. Every
searched value is tried on the config here, so a typo or a value the config would reject fails
in a second with the key named, not as an errored trial minutes into the sweep.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mmpretrain.config import (
    OBJECTIVE_WEIGHTS,
    ConfigError,
    RunConfig,
    describe_fields,
    load_config,
)

SEARCHERS = ("random", "grid", "optuna")
SCHEDULERS = ("asha", "pbt", "none")
KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
MODES = ("max", "min")
RESOURCE_KEYS = ("train.num_workers", "train.cpus_per_worker", "train.use_gpu")
BUDGET_KEYS = ("train.max_steps", "eval.every", "checkpoint.every")
# What population-based training may change in a running trial: the loss balance and the
# optimizer's step size. The model's shape (fusion type, depth) never changes mid-run.
PBT_MUTABLE = (*(f"objectives.{name}" for name in OBJECTIVE_WEIGHTS), "optim.lr")
DEFAULT_METRIC = "mean_recall@1"
# Keys a sweep owns: each trial gets its own run directory and no local metrics port.
SWEEP_OWNED = ("train.run_name", "observe.metrics_port", "observe.sweep")
TOP_LEVEL = (
    "name",
    "description",
    "config",
    "overrides",
    "resources",
    "budget",
    "space",
    "search",
    "scheduler",
    "metric",
    "mode",
    "num_trials",
    "concurrency",
)
SCHEDULER_OPTIONS = {
    "asha": {"grace_period", "reduction_factor"},
    "pbt": {
        "perturbation_interval",
        "quantile_fraction",
        "resample_probability",
        "perturbation_factors",
    },
    "none": set(),
}


class SweepSpecError(ConfigError):
    """A spec that cannot run; the message names the spec key."""


@dataclass(frozen=True)
class Dimension:
    """One searched config key: ``kind`` with its ``values`` (choice, grid) or bounds."""

    key: str
    kind: str
    values: tuple[Any, ...]

    @property
    def bounds(self) -> tuple[float, float]:
        return float(self.values[0]), float(self.values[1])

    def probes(self) -> list[Any]:
        """Values the config must accept: every listed value, or both ends of a range."""
        if self.kind in ("choice", "grid"):
            return list(self.values)
        if self.kind == "randint":
            return [int(self.values[0]), int(self.values[1]) - 1]
        return [float(self.values[0]), float(self.values[1])]

    def to_tune(self) -> Any:
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "randint":
            return tune.randint(int(self.values[0]), int(self.values[1]))
        low, high = self.bounds
        return tune.loguniform(low, high) if self.kind == "loguniform" else tune.uniform(low, high)

    def clip(self, value: Any) -> Any:
        """A perturbed value brought back into the searched range (PBT multiplies freely)."""
        if self.kind in ("uniform", "loguniform"):
            low, high = self.bounds
            return min(max(float(value), low), high)
        return value


@dataclass(frozen=True)
class SweepSpec:
    name: str
    config: str
    overrides: tuple[str, ...]
    resources: dict[str, Any]
    budget: dict[str, Any]
    space: tuple[Dimension, ...]
    searcher: str
    seed: int
    scheduler: str
    scheduler_options: dict[str, Any]
    metric: str
    mode: str
    num_trials: int
    concurrency: int
    source: dict[str, Any] = field(default_factory=dict)  # the spec as read, with CLI overrides

    @property
    def fixed_values(self) -> dict[str, Any]:
        """What every trial sets besides its searched values: resources and budget."""
        return {**self.resources, **self.budget}

    def base_config(self, values: Mapping[str, Any] | None = None) -> RunConfig:
        """The run config of a trial with these searched ``values`` (none: the base)."""
        return load_config(self.config, self.overrides, {**self.fixed_values, **(values or {})})

    @property
    def total_trials(self) -> int:
        """Trials the sweep runs: grid values multiply the samples, as in Tune."""
        grid = math.prod(len(d.values) for d in self.space if d.kind == "grid")
        return self.num_trials * grid

    def dimension(self, key: str) -> Dimension:
        return next(d for d in self.space if d.key == key)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.source)


def load_spec(path: str | Path, overrides: Sequence[str] = ()) -> SweepSpec:
    """Reads ``path`` and checks it whole; ``overrides`` are dotted run-config overrides typed
    on the command line (data paths, storage), applied after the spec's own."""
    spec_path = Path(path)
    if not spec_path.is_file():
        raise SweepSpecError(f"sweep spec {str(path)!r} does not exist")
    raw = yaml.safe_load(spec_path.read_text()) or {}
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{path}: a sweep spec is a mapping of {list(TOP_LEVEL)}")
    raw = dict(raw)
    raw["overrides"] = [*_string_list(raw.get("overrides", []), "overrides"), *overrides]
    config = Path(str(raw.get("config", "tiny")))
    if config.suffix and not config.is_absolute():
        # A YAML path is read relative to the spec, so the spec works from any directory.
        raw["config"] = str((spec_path.parent / config).resolve())
    return parse_spec(raw)


def parse_spec(raw: dict[str, Any]) -> SweepSpec:
    unknown = sorted(set(raw) - set(TOP_LEVEL))
    if unknown:
        raise SweepSpecError(f"unknown spec key {unknown[0]!r}; allowed keys are {list(TOP_LEVEL)}")
    name = str(raw.get("name") or "")
    if not name or "/" in name:
        raise SweepSpecError("name: required, a sweep directory name without '/'")
    config = str(raw.get("config", "tiny"))
    overrides = tuple(_string_list(raw.get("overrides", []), "overrides"))
    resources = _dotted_section(raw.get("resources", {}), "resources", RESOURCE_KEYS)
    budget = _dotted_section(raw.get("budget", {}), "budget", BUDGET_KEYS)

    try:
        base = load_config(config, overrides, {**resources, **budget})
    except ConfigError as exc:
        raise SweepSpecError(f"config/overrides: {exc}") from exc
    for key in SWEEP_OWNED:
        if any(item.split("=", 1)[0].strip() == key for item in overrides):
            raise SweepSpecError(
                f"overrides: {key} is set by the sweep (each trial is its own run, named after "
                "the trial; two trials on one node cannot share a metrics port, and Ray's node "
                "endpoint serves every trial's metrics)"
            )
    if not base.data.val:
        raise SweepSpecError(
            "data.val: a sweep ranks its trials on held-out pairs; set data.val (an override "
            "on the command line) to a shard pattern"
        )
    if base.eval.every < 1 or base.eval.every > base.train.max_steps:
        raise SweepSpecError(
            f"budget.eval.every: must be in [1, train.max_steps={base.train.max_steps}] (trials "
            f"report their held-out metric every eval.every steps); got {base.eval.every}"
        )

    space = tuple(_dimension(key, entry) for key, entry in _mapping(raw.get("space"), "space"))
    if not space:
        raise SweepSpecError("space: give at least one dotted config key to search")
    known = [key for key, _ in describe_fields()]
    values_so_far = {**resources, **budget}
    for dim in space:
        _check_dimension(dim, known, config, overrides, values_so_far)

    search = dict(_mapping(raw.get("search", {}), "search"))
    searcher = str(search.pop("algorithm", "random"))
    seed = search.pop("seed", 0)
    if search:
        raise SweepSpecError(f"search: unknown key {sorted(search)[0]!r}; allowed: algorithm, seed")
    _choose(searcher, "search.algorithm", SEARCHERS)
    if not isinstance(seed, int):
        raise SweepSpecError(f"search.seed: must be an integer, got {seed!r}")

    scheduler_raw = dict(_mapping(raw.get("scheduler", {"type": "none"}), "scheduler"))
    scheduler = str(scheduler_raw.pop("type", "none"))
    _choose(scheduler, "scheduler.type", SCHEDULERS)
    extra = sorted(set(scheduler_raw) - SCHEDULER_OPTIONS[scheduler])
    if extra:
        allowed = sorted(SCHEDULER_OPTIONS[scheduler]) or "none"
        raise SweepSpecError(
            f"scheduler: {extra[0]!r} is not an option of {scheduler}; allowed: {allowed}"
        )

    metric = str(raw.get("metric", DEFAULT_METRIC))
    metrics = reported_metrics(base)
    if metric not in metrics:
        raise SweepSpecError(f"metric: {metric!r} is not reported; choose one of {metrics}")
    mode = str(raw.get("mode", "max"))
    _choose(mode, "mode", MODES)
    num_trials = _positive_int(raw.get("num_trials", 1), "num_trials")
    concurrency = _positive_int(raw.get("concurrency", 1), "concurrency")

    spec = SweepSpec(
        name=name,
        config=config,
        overrides=overrides,
        resources=resources,
        budget=budget,
        space=space,
        searcher=searcher,
        seed=seed,
        scheduler=scheduler,
        scheduler_options=scheduler_raw,
        metric=metric,
        mode=mode,
        num_trials=num_trials,
        concurrency=concurrency,
        source={**raw, "config": config, "overrides": list(overrides)},
    )
    _check_searcher(spec)
    _check_scheduler(spec, base)
    return spec


def reported_metrics(cfg: RunConfig) -> list[str]:
    """Held-out numbers every evaluation reports, so a sweep can rank trials by them."""
    names = [f"{way}_recall@{k}" for way in ("mean", "i2t", "t2i") for k in cfg.eval.ks]
    return [*names, "itm_accuracy", "itm_accuracy_hard"]


def _check_dimension(
    dim: Dimension,
    known: list[str],
    config: str,
    overrides: Sequence[str],
    fixed: Mapping[str, Any],
) -> None:
    if dim.key not in known:
        close = difflib.get_close_matches(dim.key, known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else " (mmpretrain config keys lists them)"
        raise SweepSpecError(f"space.{dim.key}: not a config key{hint}")
    if dim.key in (*SWEEP_OWNED, *RESOURCE_KEYS, "train.storage_path"):
        raise SweepSpecError(f"space.{dim.key}: set by the sweep or in resources, not searched")
    for value in dim.probes():
        try:
            load_config(config, overrides, {**fixed, dim.key: value})
        except ConfigError as exc:
            raise SweepSpecError(f"space.{dim.key}: the config rejects {value!r}: {exc}") from exc


def _check_searcher(spec: SweepSpec) -> None:
    if spec.searcher == "grid":
        for dim in spec.space:
            if dim.kind not in ("grid", "choice"):
                raise SweepSpecError(
                    f"space.{dim.key}: the grid searcher needs choice or grid values, not "
                    f"{dim.kind}"
                )
        if "num_trials" in spec.source and spec.num_trials != 1:
            raise SweepSpecError(
                "num_trials: the grid searcher runs every combination once; leave it out"
            )
    if spec.searcher == "optuna" and any(d.kind == "grid" for d in spec.space):
        key = next(d.key for d in spec.space if d.kind == "grid")
        raise SweepSpecError(
            f"space.{key}: Optuna samples; use choice instead of grid (or search.algorithm: grid)"
        )


def _check_scheduler(spec: SweepSpec, base: RunConfig) -> None:
    options = spec.scheduler_options
    every = base.eval.every
    if spec.scheduler == "asha":
        grace = options.get("grace_period", every)
        if not isinstance(grace, int) or not 1 <= grace <= base.train.max_steps:
            raise SweepSpecError(
                f"scheduler.grace_period: steps in [1, train.max_steps={base.train.max_steps}],"
                f" got {grace!r}"
            )
        factor = options.get("reduction_factor", 2)
        if not isinstance(factor, (int, float)) or factor <= 1:
            raise SweepSpecError(f"scheduler.reduction_factor: must be > 1, got {factor!r}")
    if spec.scheduler != "pbt":
        return
    for dim in spec.space:
        if dim.key not in PBT_MUTABLE:
            raise SweepSpecError(
                f"space.{dim.key}: population-based training changes only {list(PBT_MUTABLE)} "
                "in a running trial (a clone must keep the checkpoint's model); fix the others "
                "in overrides"
            )
    interval = options.get("perturbation_interval", every)
    if not isinstance(interval, int) or interval < every or interval % every:
        raise SweepSpecError(
            f"scheduler.perturbation_interval: a multiple of eval.every={every} steps (trials are "
            f"compared on their evaluations), got {interval!r}"
        )
    if every % base.checkpoint.every:
        raise SweepSpecError(
            f"budget.checkpoint.every: must divide eval.every={every} under pbt, so every "
            f"evaluated step has a complete checkpoint to clone; got {base.checkpoint.every}"
        )
    fraction = options.get("quantile_fraction", 0.25)
    if not isinstance(fraction, (int, float)) or not 0 < fraction <= 0.5:
        raise SweepSpecError(f"scheduler.quantile_fraction: in (0, 0.5], got {fraction!r}")
    if spec.concurrency < 2 or spec.total_trials < 2:
        raise SweepSpecError(
            "concurrency: population-based training compares trials that run together; "
            "give num_trials and concurrency >= 2"
        )


def _dimension(key: str, entry: Any) -> Dimension:
    where = f"space.{key}"
    if not isinstance(entry, dict) or len(entry) != 1:
        raise SweepSpecError(f"{where}: one of {list(KINDS)} with its values, e.g. choice: [a, b]")
    kind, values = next(iter(entry.items()))
    _choose(kind, f"{where} kind", KINDS)
    if not isinstance(values, list) or not values:
        raise SweepSpecError(f"{where}.{kind}: a non-empty list")
    if kind in ("uniform", "loguniform", "randint"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values):
            raise SweepSpecError(f"{where}.{kind}: [low, high], two numbers")
        low, high = values
        if not low < high:
            raise SweepSpecError(f"{where}.{kind}: low must be below high, got {values}")
        if kind == "loguniform" and low <= 0:
            raise SweepSpecError(f"{where}.loguniform: bounds must be > 0, got {values}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise SweepSpecError(f"{where}.randint: integer bounds [low, high), got {values}")
    return Dimension(key=key, kind=kind, values=tuple(values))


def _dotted_section(raw: Any, section: str, allowed: Sequence[str]) -> dict[str, Any]:
    values = dict(_mapping(raw, section))
    for key in values:
        if key not in allowed:
            raise SweepSpecError(f"{section}.{key}: not a {section} key; allowed: {list(allowed)}")
    return values


def _mapping(raw: Any, section: str) -> list[tuple[str, Any]]:
    if raw is None:
        return []
    if not isinstance(raw, dict):
        raise SweepSpecError(f"{section}: must be a mapping, got {raw!r}")
    return [(str(key), value) for key, value in raw.items()]


def _string_list(raw: Any, section: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(item, str) for item in raw):
        raise SweepSpecError(f"{section}: a list of key.path=value strings")
    return list(raw)


def _choose(value: Any, key: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise SweepSpecError(f"{key}: {value!r} is not one of {list(allowed)}")


def _positive_int(value: Any, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SweepSpecError(f"{key}: a whole number >= 1, got {value!r}")
    return value
