"""``mmpretrain sweep SPEC``: Ray Tune over whole mmpretrain runs, resumable from its folder.

Everything that can be checked is checked before Tune starts: the spec (every searched value
tried on the config), the shards and tokenizer (once, for all trials), and whether one trial
fits the cluster. Trials run concurrently as far as the cluster fits them. The sweep's state
is Tune's, in ``storage_path/<sweep>``; running the same command again after the driver died
continues it with ``Tuner.restore``: finished and stopped trials stay as they are, unfinished
ones resume from their own newest complete checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from pathlib import Path
from typing import Any

import ray
import yaml
from ray import tune

from mmpretrain.config import RunConfig
from mmpretrain.console import console
from mmpretrain.errors import ResourceError
from mmpretrain.storage import is_uri
from mmpretrain.sweep.spec import Dimension, SweepSpec, SweepSpecError
from mmpretrain.sweep.trial import TrialPlan, run_trial, trial_config
from mmpretrain.sweep.watch import SweepWatch
from mmpretrain.train.launch import DATA_CPUS_EMBEDDED, check_resources, connect
from mmpretrain.train.preflight import prepare_run

SPEC_FILE = "sweep.yaml"
TRIAL_PROCESS_CPUS = 0.01


def sweep_dir_of(spec: SweepSpec) -> Path:
    storage = spec.base_config().train.storage_path
    if is_uri(storage):
        raise SweepSpecError(
            f"train.storage_path={storage!r}: a sweep needs a file system path (on a cluster, "
            "one every node mounts); Tune's sweep state and PBT's clones are kept there"
        )
    return Path(storage).expanduser().resolve() / spec.name


def run_sweep(spec: SweepSpec, address: str | None = None, verbose: bool = False) -> Path:
    """Runs (or continues) the sweep; returns its directory.

    ``address`` and ``verbose`` say where and how loudly, not what: a sweep continued on
    another cluster, or with --verbose, is still the same sweep.
    """
    sweep_dir = sweep_dir_of(spec)
    restoring = _check_restore(spec, sweep_dir)
    base = spec.base_config()
    if verbose:
        base = base.with_values({"observe.verbose": True})
    if address:
        base = base.with_values({"cluster.address": address})
    # Shards listed and the tokenizer trained once (into the sweep folder), not per trial.
    base = prepare_run(
        base.with_values({"train.storage_path": str(sweep_dir.parent), "train.run_name": spec.name})
    ).cfg
    plan = TrialPlan(
        sweep=spec.name,
        sweep_dir=str(sweep_dir),
        base=base.to_dict(),
        metric=spec.metric,
        pointers=spec.scheduler == "pbt",
    )
    probe = trial_config(plan, {}, f"{spec.name}_probe")

    connect(_with_embedded_cpus(probe, spec.concurrency))
    check_resources(probe)  # one trial must fit, or nothing would ever start
    concurrency = min(spec.concurrency, trials_that_fit(probe))
    if base.data.ingest_cpus is None:
        # Concurrent trials share what their workers leave; unlimited, one trial's read tasks
        # could hold the CPUs the next trial's workers wait for, and both would stall.
        plan = dataclasses.replace(
            plan,
            base=base.with_values({"data.ingest_cpus": ingest_share(probe, concurrency)}).to_dict(),
        )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    (sweep_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.to_dict(), sort_keys=False))

    trainable = tune.with_resources(
        tune.with_parameters(run_trial, plan=plan),
        # The trial's own process only waits on Ray Train, whose workers ask for the CPUs
        # (Tune refuses an empty request, hence a sliver).
        {"CPU": TRIAL_PROCESS_CPUS},
    )
    if restoring:
        console(f"sweep {spec.name}: continuing from {sweep_dir}")
        tuner = tune.Tuner.restore(
            str(sweep_dir), trainable=trainable, resume_unfinished=True, resume_errored=False
        )
    else:
        console(
            f"sweep {spec.name}: {spec.total_trials} trials, up to {concurrency} at once, "
            f"{spec.searcher} search, scheduler {spec.scheduler}, ranked by {spec.metric} "
            f"({spec.mode}); in {sweep_dir}"
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(spec),
            tune_config=_tune_config(spec, probe, concurrency),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(sweep_dir.parent),
                # A trial that errors is recorded with its error and the sweep goes on.
                failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                callbacks=[SweepWatch(sweep_dir, spec.metric, spec.mode, probe.train.max_steps)],
                verbose=0,
            ),
        )
    # Tune's own reporter prints a configuration box and status tables even at verbose=0;
    # its legacy one is silent there, and SweepWatch prints the sweep's lines instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tuner.fit()
    return sweep_dir


def _check_restore(spec: SweepSpec, sweep_dir: Path) -> bool:
    """True to continue the sweep in ``sweep_dir``; a changed spec is refused.

    Tune's state there is pickled: it is only ever read from the sweep's own folder.
    """
    stored_file = sweep_dir / SPEC_FILE
    if not stored_file.is_file():
        return False
    stored = yaml.safe_load(stored_file.read_text())
    current = spec.to_dict()
    if stored != current:
        changed = sorted(
            key for key in set(stored) | set(current) if stored.get(key) != current.get(key)
        )
        raise SweepSpecError(
            f"{sweep_dir} holds sweep {spec.name!r} with another spec ({', '.join(changed)} "
            f"changed); run it with the spec and overrides it started with, or give the new "
            "spec another name"
        )
    return tune.Tuner.can_restore(str(sweep_dir))


def trials_that_fit(cfg: RunConfig) -> int:
    """Trials of this size the cluster runs at once, leaving 1 CPU for Ray Data."""
    total = ray.cluster_resources()
    per_trial_cpus = cfg.train.max_workers * cfg.train.cpus_per_worker
    fit = int((total.get("CPU", 0) - 1) // per_trial_cpus)
    if cfg.train.use_gpu:
        fit = min(fit, int(total.get("GPU", 0) // cfg.train.max_workers))
    if fit < 1:
        raise ResourceError("the cluster cannot fit one trial; lower train.num_workers")
    return fit


def ingest_share(cfg: RunConfig, concurrency: int) -> float:
    """Each concurrent trial's share of the CPUs that trials' workers leave free."""
    workers = concurrency * cfg.train.max_workers * cfg.train.cpus_per_worker
    free = ray.cluster_resources().get("CPU", 0) - workers - concurrency * TRIAL_PROCESS_CPUS
    return max(1.0, math.floor(free / concurrency))


def _with_embedded_cpus(cfg: RunConfig, concurrency: int) -> RunConfig:
    """An embedded Ray sized for ``concurrency`` trials at once plus Ray Data."""
    if cfg.cluster.num_cpus is not None or cfg.cluster.address or os.environ.get("RAY_ADDRESS"):
        return cfg
    per_trial = math.ceil(cfg.train.max_workers * cfg.train.cpus_per_worker)
    # Twice the trials' CPUs: each trial also runs a Tune actor, Ray Train's controller and
    # small actors, and Ray warns when more processes start than it expects per logical CPU.
    cpus = 2 * concurrency * per_trial + max(DATA_CPUS_EMBEDDED, os.cpu_count() or 1)
    return cfg.with_values({"cluster.num_cpus": cpus})


def param_space(spec: SweepSpec) -> dict[str, Any]:
    if spec.searcher == "grid":
        return {dim.key: tune.grid_search(list(dim.values)) for dim in spec.space}
    return {dim.key: dim.to_tune() for dim in spec.space}


def _tune_config(spec: SweepSpec, probe: RunConfig, concurrency: int) -> tune.TuneConfig:
    return tune.TuneConfig(
        metric=spec.metric,
        mode=spec.mode,
        num_samples=1 if spec.searcher == "grid" else spec.num_trials,
        # Tune honours max_concurrent_trials for Searchers only; the variant generator of
        # random and grid search takes its own limit (see _searcher).
        max_concurrent_trials=concurrency if spec.searcher == "optuna" else None,
        search_alg=_searcher(spec, concurrency),
        scheduler=_scheduler(spec, probe),
        reuse_actors=False,  # a stopped or cloned trial's workers go with its actor
        trial_name_creator=functools.partial(trial_name, spec.name),
        trial_dirname_creator=functools.partial(trial_name, spec.name),
    )


def trial_name(sweep: str, trial: Any) -> str:
    """Stable across restores (the trial id is kept in Tune's state), no timestamp: a trial's
    run directory must keep its name for its run to resume there."""
    return f"{sweep}_{trial.trial_id}"


def _searcher(spec: SweepSpec, concurrency: int) -> Any:
    from ray.tune.search.basic_variant import BasicVariantGenerator

    if spec.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # "A new study created" etc.

        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=spec.seed))
    return BasicVariantGenerator(random_state=spec.seed, max_concurrent=concurrency)


def _scheduler(spec: SweepSpec, probe: RunConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, PopulationBasedTraining

    options = spec.scheduler_options
    every = probe.eval.every
    if spec.scheduler == "asha":
        return ASHAScheduler(
            time_attr="step",  # the run's own step: Tune's iteration count restarts on restore
            max_t=probe.train.max_steps,
            grace_period=options.get("grace_period", every),
            reduction_factor=options.get("reduction_factor", 2),
        )
    if spec.scheduler == "pbt":
        return PopulationBasedTraining(
            time_attr="step",
            perturbation_interval=options.get("perturbation_interval", every),
            hyperparam_mutations={dim.key: _mutation(dim) for dim in spec.space},
            quantile_fraction=options.get("quantile_fraction", 0.25),
            resample_probability=options.get("resample_probability", 0.25),
            perturbation_factors=tuple(options.get("perturbation_factors", (1.2, 0.8))),
            custom_explore_fn=ClipToSpace(spec),
        )
    return None


def _mutation(dim: Dimension) -> Any:
    """How PBT may change a value: listed values step to a neighbour (a list), ranges are
    multiplied by the perturbation factors or drawn afresh (a Tune domain)."""
    return list(dim.values) if dim.kind in ("choice", "grid") else dim.to_tune()


class ClipToSpace:
    """PBT's explore step, bounded: perturbed values stay inside the searched ranges."""

    def __init__(self, spec: SweepSpec):
        self.dimensions = {dim.key: dim for dim in spec.space}

    def __call__(self, config: dict[str, Any]) -> dict[str, Any]:
        return {
            key: self.dimensions[key].clip(value) if key in self.dimensions else value
            for key, value in config.items()
        }
