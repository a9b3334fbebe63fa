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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from mmpretrain.config import (
    COMMAND_LINE,
    OBJECTIVE_WEIGHTS,
    ConfigError,
    RunConfig,
    describe_fields,
    doc,
    load_config,
    parse_overrides,
)
from mmpretrain.config.load import read_yaml_mapping
from mmpretrain.config.overrides import override_keys
from mmpretrain.config.schema import build, choice, refuse_unknown, require

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


class SweepSpecError(ConfigError):
    """A spec that cannot run; the message names the spec key."""


@dataclass
class SearchSection:
    algorithm: str = doc(
        "How trials pick their values: random, grid (every combination once) or optuna.",
        default="random",
    )
    seed: int = doc("Seed of the searcher's sampling.", default=0)

    def __post_init__(self) -> None:
        choice(self.algorithm, "search.algorithm", SEARCHERS)


@dataclass
class SchedulerSection:
    type: str = doc(
        "asha (stop weak trials early), pbt (population-based training: clone the best "
        "trials' checkpoints, perturb weights and lr) or none.",
        default="none",
    )
    grace_period: int | None = doc(
        "asha: steps every trial runs before it may be stopped; null = eval.every.", default=None
    )
    reduction_factor: float | None = doc(
        "asha: 1 in this many trials goes on at each rung (> 1); null = 2.", default=None
    )
    perturbation_interval: int | None = doc(
        "pbt: steps between perturbations, a multiple of eval.every; null = eval.every.",
        default=None,
    )
    quantile_fraction: float | None = doc(
        "pbt: share of trials cloned into the worst ones, in (0, 0.5]; null = 0.25.",
        default=None,
    )
    resample_probability: float | None = doc(
        "pbt: chance a perturbed value is drawn afresh from the space; null = 0.25.", default=None
    )
    perturbation_factors: list[float] | None = doc(
        "pbt: factors a perturbed value is multiplied by; null = [1.2, 0.8].", default=None
    )

    def __post_init__(self) -> None:
        choice(self.type, "scheduler.type", SCHEDULERS)
        for key in sorted(self.options()):
            require(
                key in SCHEDULER_OPTIONS[self.type],
                f"scheduler.{key}",
                f"not an option of {self.type}; allowed: "
                f"{sorted(SCHEDULER_OPTIONS[self.type]) or 'none'}",
            )

    def options(self) -> dict[str, Any]:
        """The options the spec set (their defaults live with the scheduler's set-up)."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name != "type" and getattr(self, f.name) is not None
        }


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


@dataclass
class SweepFile:
    """A sweep spec as written (``tune/*.yaml``), checked by the config's schema engine."""

    name: str = doc("Sweep directory name under train.storage_path (no '/'); required.", default="")
    description: str = doc("What the sweep is for.", default="")
    config: str = doc(
        "Base run config: a preset name or a YAML path (read relative to the spec).",
        default="tiny",
    )
    overrides: list[str] = doc(
        "Dotted run-config overrides every trial gets (key.path=value); those typed on the "
        "command line come after them.",
        default_factory=list,
    )
    resources: dict[str, Any] = doc(
        f"What each trial may use, by dotted key: {', '.join(RESOURCE_KEYS)}.",
        default_factory=dict,
    )
    budget: dict[str, Any] = doc(
        f"How long each trial runs and how often it is compared: {', '.join(BUDGET_KEYS)}.",
        default_factory=dict,
    )
    space: dict[str, Any] = doc(
        f"Searched dotted config keys, each one of {', '.join(KINDS)} with its values or "
        "[low, high] bounds, e.g. optim.lr: {loguniform: [1e-5, 1e-3]}.",
        default_factory=dict,
    )
    search: SearchSection = field(default_factory=SearchSection)
    scheduler: SchedulerSection = field(default_factory=SchedulerSection)
    metric: str = doc(
        "Held-out number the trials are ranked by (reported every eval.every steps).",
        default=DEFAULT_METRIC,
    )
    mode: str = doc("max or min: whether a higher metric is better.", default="max")
    num_trials: int = doc(
        "Samples drawn from the space (grid values multiply them, as in Tune).", default=1
    )
    concurrency: int = doc("Trials that run at once.", default=1)

    def __post_init__(self) -> None:
        require(
            bool(self.name) and "/" not in self.name,
            "name",
            "required, a sweep directory name without '/'",
        )
        choice(self.mode, "mode", MODES)
        for key in ("num_trials", "concurrency"):
            value = getattr(self, key)
            require(value >= 1, key, f"a whole number >= 1, got {value!r}")
        refuse_unknown(self.resources, RESOURCE_KEYS, "resources")
        refuse_unknown(self.budget, BUDGET_KEYS, "budget")


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
    on the command line (data paths, storage), applied after the spec's own. An error names
    the spec file, or the command line where the bad key was typed there."""
    spec_path = Path(path)
    raw = read_yaml_mapping(spec_path, "sweep spec", SweepSpecError)
    try:
        return parse_spec(raw, overrides, spec_path.parent)
    except ConfigError as exc:
        raise exc.at(str(path)) from None


def parse_spec(
    raw: dict[str, Any], cli_overrides: Sequence[str] = (), base_dir: Path | None = None
) -> SweepSpec:
    """The spec ``raw`` (a YAML mapping) checked whole: its layout by the schema engine, then
    every searched value on the run config. A relative config path is read from ``base_dir``
    (the spec's folder), so the spec works from any directory."""
    try:
        return _parse_spec(raw, cli_overrides, base_dir)
    except ConfigError as exc:
        raise exc.as_kind(SweepSpecError) from None


def _parse_spec(
    raw: dict[str, Any], cli_overrides: Sequence[str], base_dir: Path | None
) -> SweepSpec:
    spec_file: SweepFile = build(SweepFile, raw)
    config = spec_file.config
    if base_dir is not None and Path(config).suffix and not Path(config).is_absolute():
        config = str((base_dir / config).resolve())
    overrides = (*spec_file.overrides, *cli_overrides)
    resources, budget = spec_file.resources, spec_file.budget
    base = _load_base(config, overrides, cli_overrides, resources, budget)
    for key in SWEEP_OWNED:
        if any(item.split("=", 1)[0].strip() == key for item in overrides):
            raise SweepSpecError(
                f"{key} is set by the sweep (each trial is its own run, named after "
                "the trial; two trials on one node cannot share a metrics port, and Ray's node "
                "endpoint serves every trial's metrics)",
                "overrides",
            )
    if not base.data.val:
        raise SweepSpecError(
            "a sweep ranks its trials on held-out pairs; set data.val (an override "
            "on the command line) to a shard pattern",
            "data.val",
        )
    if base.eval.every < 1 or base.eval.every > base.train.max_steps:
        raise SweepSpecError(
            f"must be in [1, train.max_steps={base.train.max_steps}] (trials "
            f"report their held-out metric every eval.every steps); got {base.eval.every}",
            "budget.eval.every",
        )

    space = tuple(_dimension(str(key), entry) for key, entry in spec_file.space.items())
    if not space:
        raise SweepSpecError("give at least one dotted config key to search", "space")
    known = [key for key, _ in describe_fields()]
    values_so_far = {**resources, **budget}
    for dim in space:
        _check_dimension(dim, known, config, overrides, values_so_far)

    metrics = reported_metrics(base)
    if spec_file.metric not in metrics:
        raise SweepSpecError(
            f"got {spec_file.metric!r}, which is not reported; allowed values are {metrics}",
            "metric",
        )
    spec = SweepSpec(
        name=spec_file.name,
        config=config,
        overrides=overrides,
        resources=resources,
        budget=budget,
        space=space,
        searcher=spec_file.search.algorithm,
        seed=spec_file.search.seed,
        scheduler=spec_file.scheduler.type,
        scheduler_options=spec_file.scheduler.options(),
        metric=spec_file.metric,
        mode=spec_file.mode,
        num_trials=spec_file.num_trials,
        concurrency=spec_file.concurrency,
        source={**raw, "config": config, "overrides": list(overrides)},
    )
    _check_searcher(spec)
    _check_scheduler(spec, base)
    return spec


def _load_base(
    config: str,
    overrides: Sequence[str],
    cli_overrides: Sequence[str],
    resources: Mapping[str, Any],
    budget: Mapping[str, Any],
) -> RunConfig:
    """The base run config; an error in what the spec set is the spec's, named by section."""
    try:
        return load_config(config, overrides, {**resources, **budget})
    except ConfigError as exc:
        typed = override_keys(parse_overrides(cli_overrides))
        if exc.file != COMMAND_LINE or exc.key in typed:
            raise  # the config file's own, or an override typed on the command line
        sections = {"resources": resources, "budget": budget}
        section = next((name for name, keys in sections.items() if exc.key in keys), "overrides")
        raise SweepSpecError(str(exc), section) from None


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
    choice(kind, where, KINDS)
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
