"""Driver side of a run: validate, connect to Ray, build datasets, run the TorchTrainer.

Everything that can be checked on the driver is checked before the first Ray call (shard
patterns, tokenizer, resources), so a mistake costs seconds, not a worker-group start-up that
retries forever.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.data import DataContext, ExecutionOptions, ExecutionResources
from ray.train import UserCallback
from ray.train.torch import TorchTrainer
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from mmpretrain.config import ConfigError, RunConfig
from mmpretrain.console import Ticker, TrainingWatch, console
from mmpretrain.data import quality, resume_filter
from mmpretrain.data.pipeline import build_dataset
from mmpretrain.errors import HardStopError, ResourceError
from mmpretrain.metrics import scrape_targets
from mmpretrain.ports import free_ports
from mmpretrain.storage import Folder
from mmpretrain.train import stop
from mmpretrain.train.checkpoint.manifest import (
    CheckpointStatus,
    check_checkpoint,
    list_checkpoints,
)
from mmpretrain.train.loop import LoopSettings, train_loop_per_worker
from mmpretrain.train.preflight import prepare_run
from mmpretrain.train.quiet import (
    driver_logging,
    drop_ray_notices,
    quiet_driver,
    train_logging,
)

DATA_CPUS_EMBEDDED = 2  # logical CPUs left to Ray Data in an embedded cluster
RAY_RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train V2's record of a run
START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
START_ATTEMPTS = 3


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: str | None
    metrics: dict[str, Any]
    stopped_by: int | None = None  # the signal that stopped the run early (graceful stop)
    stopped_at: int | None = None  # the step of its checkpoint, where the same command resumes


def newest_by_sizes(storage: Folder) -> CheckpointStatus | None:
    """The checkpoint a resume would start from: the newest with its manifest and every file
    at its size (a torn one, cut off mid-write, has none). Checksums are not read: that can
    take minutes."""
    statuses = list_checkpoints(storage, verify_checksums=False)
    return next((status for status in statuses if status.complete), None)


def newest_complete_step(storage: Folder) -> int | None:
    newest = newest_by_sizes(storage)
    return newest.step if newest is not None else None


def finished_result(cfg: RunConfig) -> TrainResult | None:
    """The result of a run that already reached train.stop_at / train.max_steps, or None.

    Re-running a finished command (a job resubmitted after it succeeded, a script run twice)
    then costs a directory listing instead of a worker-group start-up that would load the
    checkpoint only to train nothing and evaluate again. Sizes pick the candidate, as for any
    resume; only a checkpoint at the last step has its checksums read, as the resume would.
    A sweep trial always starts: Tune needs its reports.
    """
    if cfg.observe.sweep is not None:
        return None
    newest = newest_by_sizes(cfg.run_storage)
    if newest is None or newest.step is None or newest.step < cfg.train.last_step:
        return None
    if not check_checkpoint(newest.path, verify_checksums=True).complete:
        return None  # the workers pass over it, with a warning, and train again
    evaluated = cfg.run_dir / "eval.json"
    final_eval_due = bool(cfg.data.val) and cfg.train.last_step >= cfg.train.max_steps
    if final_eval_due and not _evaluated_at(evaluated, newest.step):
        return None  # stopped during the final evaluation: the workers evaluate again
    limit = "stop_at" if cfg.train.stop_at else "max_steps"
    console(
        f"{cfg.train.run_name} is already at step {newest.step} (train.{limit}="
        f"{cfg.train.last_step}): nothing to train; raise train.{limit} to go on"
    )
    metrics = json.loads(evaluated.read_text()) if evaluated.is_file() else {}
    return TrainResult(cfg.run_dir, str(newest.path), metrics)


def _evaluated_at(eval_json: Path, step: int) -> bool:
    try:
        return json.loads(eval_json.read_text()).get("step") == step
    except (OSError, json.JSONDecodeError):
        return False


def embedded_cpus(cfg: RunConfig) -> int:
    """Logical CPUs for a local Ray: the workers' share plus room for Ray Data.

    Logical CPUs may exceed physical cores; if the workers took every CPU, Ray Data would get
    none and ingest would stall without an error.
    """
    if cfg.cluster.num_cpus is not None:
        return cfg.cluster.num_cpus
    workers = cfg.train.max_workers * cfg.train.cpus_per_worker
    return int(workers + 0.999) + max(DATA_CPUS_EMBEDDED, os.cpu_count() or 1)


def connect(cfg: RunConfig) -> None:
    """Joins ``cluster.address`` (or RAY_ADDRESS) if given, else starts an embedded Ray.

    Workers' output is forwarded (log_to_driver): rank 0's progress lines, warnings and tables
    reach the console that way. Ray's own lines stay in its log files unless observe.verbose
    (see train/quiet.py).
    """
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    quiet_driver(cfg.observe.verbose, embedded=not address and not ray.is_initialized())
    if ray.is_initialized():
        return
    logging_config = driver_logging(cfg.observe.verbose)
    if address:
        ray.init(address=address, log_to_driver=True, logging_config=logging_config)
    else:
        # "local": always a fresh instance, never some other cluster left on this machine.
        cpus = embedded_cpus(cfg)
        (dashboard_port,) = free_ports(1)
        ray.init(
            address="local",
            num_cpus=cpus,
            log_to_driver=True,
            logging_config=logging_config,
            # Ray Train's placement-group cleaner asks the state API about the controller with
            # address "auto", which fails ("multiple active Ray instances") when another Ray
            # runs on this machine: a sweep trial that Tune stopped then keeps its worker
            # group's CPUs for good (seen: a PBT sweep waiting forever). This Ray's own API
            # server in every worker's environment points such calls here.
            dashboard_port=dashboard_port,
            runtime_env={
                "env_vars": {"RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{dashboard_port}"}
            },
            # Ray lets as many Python workers start at once as the machine has cores, and
            # warns past 4x that; a run's workers, controller, data tasks and actors start
            # together, which on a 2-core machine trips the warning every run. The embedded
            # Ray declares more logical CPUs than cores on purpose (see embedded_cpus).
            _system_config={"worker_maximum_startup_concurrency": cpus},
        )
    drop_ray_notices(cfg.observe.verbose)


def check_resources(cfg: RunConfig) -> None:
    """Fails at once on what can never fit; Ray Train would retry the worker group forever."""
    train = cfg.train
    total = ray.cluster_resources()
    need_cpu = train.min_workers * train.cpus_per_worker
    if total.get("CPU", 0) < need_cpu + 1:
        raise ResourceError(
            f"train.num_workers={train.num_workers} x train.cpus_per_worker="
            f"{train.cpus_per_worker} needs {need_cpu:g} CPUs plus at least 1 for Ray Data,"
            f" but the cluster has {total.get('CPU', 0):g}; lower them or add nodes"
        )
    largest_node = max(
        (node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"]), default=0
    )
    if largest_node < train.cpus_per_worker:
        raise ResourceError(
            f"train.cpus_per_worker={train.cpus_per_worker} is more than any node has (the "
            f"largest has {largest_node:g} CPUs); a worker runs on one node"
        )
    if train.use_gpu and total.get("GPU", 0) < train.min_workers:
        raise ResourceError(
            f"train.use_gpu with train.num_workers={train.num_workers} needs that many GPUs,"
            f" but the cluster has {total.get('GPU', 0):g}"
        )


def check_storage_is_shared(cfg: RunConfig) -> None:
    """On a multi-node cluster a plain train.storage_path must be one every node mounts.

    Each rank writes its checkpoint shard there and rank 0 reads them all back at resume; a
    folder local to each node would scatter a checkpoint over the nodes, unnoticed until a
    resume finds it incomplete. A marker written here must be visible from every node.
    """
    storage = cfg.run_storage
    nodes = [node["NodeID"] for node in ray.nodes() if node["Alive"]]
    if not storage.is_local or len(nodes) < 2:
        return
    marker = storage.local_path / f".shared-{uuid.uuid4().hex}"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        probes = [
            _path_exists.options(
                scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)
            ).remote(str(marker))
            for node in nodes
        ]
        blind = [node for node, seen in zip(nodes, ray.get(probes), strict=True) if not seen]
    finally:
        marker.unlink(missing_ok=True)
    if blind:
        raise ConfigError(
            f"train.storage_path={cfg.train.storage_path!r} is not shared: {len(blind)} of "
            f"{len(nodes)} nodes cannot see it (node {blind[0][:12]}...). Multi-node runs need "
            "a file system every node mounts (NFS, EFS, Lustre) or an object-store URI "
            "(s3://bucket/runs, gs://bucket/runs)"
        )


@ray.remote(num_cpus=0)
def _path_exists(path: str) -> bool:
    return os.path.exists(path)


def bound_worker_group_start(cfg: RunConfig) -> int:
    """Makes a worker group that cannot be scheduled fail the run within
    START_ATTEMPTS x train.start_timeout_s; returns Ray Train's controller failure limit.

    Ray Train V2 gives up one start attempt after RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S (read
    in the driver and handed to its controller), then retries without end unless that limit is
    set. More than one attempt, because right after a node is lost Ray Train may size the new
    group from a stale view of the cluster and wait for workers that can no longer fit.
    """
    if cfg.train.start_timeout_s == -1:
        return -1
    os.environ[START_TIMEOUT_ENV] = str(cfg.train.start_timeout_s)
    return START_ATTEMPTS - 1


def run_training(cfg: RunConfig, callbacks: Sequence[UserCallback] = ()) -> TrainResult:
    """One run, whichever way it was started (CLI, job, RayJob, sweep trial).

    ``callbacks`` run in Ray Train's controller after each report; a sweep trial passes the
    one that hands its held-out evaluations to Tune. A trial (``observe.sweep`` set) prints
    no progress lines or tables: the sweep's console shows one line per trial instead.
    """
    # Local files checked, shards listed, data.tokenizer resolved: all before any Ray call.
    prepared = prepare_run(cfg)
    cfg, train_shards, val_shards = prepared.cfg, prepared.train_shards, prepared.val_shards

    run_dir, storage = cfg.run_dir, cfg.run_storage
    run_dir.mkdir(parents=True, exist_ok=True)
    finished = finished_result(cfg)
    if finished is not None:
        return finished

    connect(cfg)
    check_resources(cfg)
    check_storage_is_shared(cfg)
    in_sweep = cfg.observe.sweep is not None
    if not in_sweep:
        targets = scrape_targets(ray.nodes(), cfg.observe.metrics_port, cfg.observe.metrics_host)
        console("metrics for Prometheus:\n  " + "\n  ".join(targets))
    (storage / "config.yaml").write_text(cfg.to_yaml())
    # Where to resume is decided from the run directory's manifests (train/checkpoint/save.py), not
    # from Ray's record of the run, which lists checkpoints that retention deleted or that were
    # set aside as incomplete, and then refuses to start ("corrupted run directory").
    (storage / RAY_RUN_SNAPSHOT).delete()
    DataContext.get_current().enable_progress_bars = False  # the trainer prints progress
    train_counter = quality.counter_name(cfg.train.run_name, "train")
    skip_list = resume_filter.filter_name(cfg.train.run_name)
    stop_flag = stop.flag_name(cfg.train.run_name)
    # The actors live while these handles do: for the whole of fit(), restarts included.
    actors = [
        quality.create_counter(train_counter),
        resume_filter.create_filter(skip_list),
        stop.create_flag(stop_flag),
    ]
    graceful = stop.GracefulStop(actors[-1], cfg.train.stop_grace_s)
    datasets = {
        "train": build_dataset(
            train_shards,
            cfg.data,
            shuffle_seed=cfg.train.seed,
            counter=train_counter,
            resume_filter_name=skip_list,
            crop_seed=cfg.train.seed,  # the training split alone gets data.crop
        )
    }
    if val_shards:
        datasets["val"] = build_dataset(val_shards, cfg.data)

    # The held-out set is read whole and in order by every worker (see evaluate/heldout.py).
    # On a terminal the driver draws one updating status line from rank 0's metrics.jsonl.
    live = Ticker(TrainingWatch(run_dir / "metrics.jsonl", cfg.train.max_steps))
    val_options = ExecutionOptions(preserve_order=True)
    train_options = ray.train.DataConfig.default_ingest_options()
    train_options.preserve_order = cfg.train.deterministic  # else blocks go as they finish
    if cfg.data.ingest_cpus is not None:
        for options in (train_options, val_options):
            options.resource_limits = ExecutionResources(cpu=cfg.data.ingest_cpus)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config=dataclasses.asdict(
            LoopSettings(
                config=cfg.to_dict(),
                datasets=sorted(datasets),
                quality_counter=train_counter,
                resume_filter=skip_list,
                progress_lines=not live.line.enabled and not in_sweep,
                eval_tables=not in_sweep,
                stop_flag=stop_flag,
            )
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=(
                cfg.train.num_workers
                if isinstance(cfg.train.num_workers, int)
                else (cfg.train.min_workers, cfg.train.max_workers)
            ),
            use_gpu=cfg.train.use_gpu,
            resources_per_worker={"CPU": cfg.train.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.train.run_name,
            storage_path=cfg.train.storage_path,  # absolute, or a URI
            logging_config=train_logging(cfg.observe.verbose),
            callbacks=list(callbacks),
            # Retention is ours (checkpoint.keep): Ray cannot tell complete from not.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=None),
            # A restarted worker group resumes in train_loop_per_worker, from the run
            # directory's newest complete checkpoint.
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.train.max_failures,
                controller_failure_limit=bound_worker_group_start(cfg),
            ),
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(
            datasets_to_split=["train"],
            execution_options={"train": train_options, "val": val_options},
        ),
    )
    try:
        with live:
            result = graceful.run(trainer.fit)
    except HardStopError as exc:
        # At once: the workers go now, mid-step or mid-checkpoint (a torn one has no manifest),
        # rather than at exit, after they may have finished the stop's checkpoint after all.
        ray.shutdown()
        step = newest_complete_step(storage)
        where = f"step {step}" if step is not None else "none yet"
        raise HardStopError(
            f"{exc}; newest complete checkpoint: {where}; run the same command to resume",
            exc.signum,
        ) from None
    except ray.train.TrainingFailedError as exc:
        # Say why in our words when the workers stopped on bad data or never started.
        quality.check_bad_fraction(quality.snapshot(train_counter), cfg.data.max_bad_fraction)
        if isinstance(exc, ray.train.ControllerError) and "startup timed out" in str(exc):
            raise ResourceError(
                f"the cluster could not fit train.num_workers={cfg.train.num_workers} workers "
                f"of train.cpus_per_worker={cfg.train.cpus_per_worker} CPUs"
                f"{' and 1 GPU' if cfg.train.use_gpu else ''} in {START_ATTEMPTS} attempts of "
                f"train.start_timeout_s={cfg.train.start_timeout_s:g}; free resources, add nodes"
                " or lower them"
            ) from exc
        raise exc
    del actors
    checkpoint = result.checkpoint.path if result.checkpoint is not None else None
    outcome = TrainResult(run_dir, checkpoint, dict(result.metrics or {}))
    if graceful.requested:
        step = newest_complete_step(storage)
        # A signal that came during the final evaluation found the run finished anyway.
        if step is None or step < cfg.train.last_step:
            outcome.stopped_by, outcome.stopped_at = graceful.signum, step
    return outcome
