"""The per-worker training loop: read it top to bottom.

tokenizer -> model -> resume plan (converting ZeRO shards if the world size changed) ->
DeepSpeed engine -> restore -> ``while step < last_step`` over the worker's split of what the
epoch has left (forward, backward, step, momentum update, note the keys consumed) -> log,
checkpoint (with the data position of all ranks) and evaluate every N steps, or checkpoint and
leave when the driver was asked to stop -> held-out evaluation at the end.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import ray.train
import torch

from mmpretrain import distributed
from mmpretrain.config import RunConfig, config_from_dict
from mmpretrain.console import console
from mmpretrain.data import quality, resume_filter
from mmpretrain.data.pipeline import collate_batch
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.evaluate.heldout import evaluate
from mmpretrain.evaluate.report import format_table
from mmpretrain.metrics import TrainMetrics
from mmpretrain.train.audit import SampleKeyLog
from mmpretrain.train.builder import build_training_task
from mmpretrain.train.checkpoint.log_sync import pull_logs, push_logs
from mmpretrain.train.checkpoint.reshard import plan_resume
from mmpretrain.train.checkpoint.save import (
    choose_resume_checkpoint,
    config_digest,
    restore,
    save_and_report,
)
from mmpretrain.train.engine import (
    adopt_config_lr,
    average_buffers,
    build_engine,
    update_momentum_encoder,
)
from mmpretrain.train.position import DataPosition, gather_position
from mmpretrain.train.progress import ProgressLog
from mmpretrain.train.quiet import library_prints, quiet_worker
from mmpretrain.train.state import TrainState
from mmpretrain.train.stop import StopWatch


@dataclass(frozen=True)
class LoopSettings:
    """What the driver hands every training worker besides the datasets.

    Ray Train passes ``train_loop_config`` as a plain dict; the driver builds it with
    ``dataclasses.asdict`` and the worker rebuilds it here, so both ends agree on the fields.
    """

    config: dict[str, Any]  # RunConfig.to_dict(); the worker rebuilds and re-validates it
    datasets: list[str]  # "train", and "val" when there are held-out shards
    quality_counter: str | None  # the run's data-quality books (a named actor)
    resume_filter: str | None  # the run's list of what a resumed epoch already trained on
    progress_lines: bool = True  # False when the driver draws a live line instead
    eval_tables: bool = True  # print each periodic evaluation's table (not in a sweep)
    stop_flag: str | None = None  # the driver's SIGTERM/SIGINT flag (train/stop.py)


class EmptyEpochError(RuntimeError):
    """The training split yields no full batch, so the loop could never advance."""


def _mean_across_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    names = sorted(values)
    stacked = torch.stack([values[name].detach().float().cpu() for name in names])
    return dict(zip(names, distributed.mean_across_ranks(stacked).tolist(), strict=True))


def _shared_quality_counts(counter: str | None, rank: int) -> dict[str, int]:
    """Rank 0 reads the run's data-quality books and every rank gets the same copy.

    Every rank must judge data.max_bad_fraction on identical numbers, or one rank would stop
    while the others wait for it in a collective.
    """
    return distributed.broadcast_from_rank0(
        quality.snapshot(counter) if rank == 0 and counter else {}
    )


def _start_pass(filter_name: str | None, position: DataPosition, rank: int, epoch: int) -> None:
    """Tells the read tasks what this pass over the shards leaves out, before any rank reads
    (collective): nothing for a fresh epoch, what was consumed for a resumed one; and the
    epoch, which reseeds data.crop=random_resized."""
    if filter_name and rank == 0:
        resume_filter.publish(filter_name, position.finished, position.consumed, epoch)
    distributed.barrier()


def _draw_seed(seed: int, rank: int, samples_seen: int) -> int:
    """Masks, hard negatives and SSL views are drawn from the run's position, so a resumed run
    draws what the uninterrupted one would have."""
    return (seed * 1_000_003 + rank * 7_919 + samples_seen) % 2**63


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    settings = LoopSettings(**loop_config)
    cfg: RunConfig = config_from_dict(settings.config)
    quiet_worker(cfg.observe.verbose)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))

    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    # Identical initial weights on every rank; the engine broadcasts rank 0's anyway.
    torch.manual_seed(cfg.train.seed)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    task = build_training_task(cfg, tokenizer).to(device)

    storage = cfg.run_storage
    if rank == 0:
        pull_logs(cfg.run_dir, storage)
    checkpoint = choose_resume_checkpoint(storage, rank)
    source = None
    if checkpoint is not None:
        source = plan_resume(checkpoint, world, cfg.train.zero_stage, cfg.run_dir, rank)
    with library_prints(cfg.observe.verbose):
        engine = build_engine(task, cfg, load_universal=source is not None and source.universal)
    state = TrainState()
    if source is not None:
        state = restore(engine, source)
        lr_moved = adopt_config_lr(engine, cfg.optim.lr)  # a PBT clone's perturbed lr
        if rank == 0:
            how = " (ZeRO shards converted to this world size)" if source.universal else ""
            how += f" with optim.lr={cfg.optim.lr:g}" if lr_moved else ""
            console(f"resumed from {source.checkpoint} at step {state.step}{how}")
    facts = {
        "world_size": world,
        "zero_stage": cfg.train.zero_stage,
        "config_digest": config_digest(cfg.to_yaml()),
    }
    keys_log = SampleKeyLog(cfg.run_dir, rank) if cfg.train.record_sample_keys else None
    keys_path = keys_log.path if keys_log is not None else None
    last_step = cfg.train.last_step

    progress = None
    if rank == 0:
        progress = ProgressLog(
            cfg.run_dir, cfg.train.max_steps, state.step, settings.progress_lines
        )
    has_val = "val" in settings.datasets
    train_split = ray.train.get_dataset_shard("train")
    counts: dict[str, int] = {}
    # Prometheus metrics through Ray's node endpoint (and observe.metrics_port on rank 0).
    metrics = TrainMetrics.for_worker(
        cfg.train.run_name,
        rank,
        cfg.observe.metrics_port,
        cfg.observe.metrics_host,
        sweep=cfg.observe.sweep,
    )
    stop = StopWatch(settings.stop_flag)
    stopping = False
    while state.step < last_step and not stopping:
        _start_pass(settings.resume_filter, state.position, rank, state.epoch)
        batches_this_epoch = 0
        for batch in train_split.iter_torch_batches(
            batch_size=cfg.data.batch_size,
            drop_last=True,
            collate_fn=collate_batch,
            local_shuffle_buffer_size=cfg.data.shuffle_buffer or None,
            local_shuffle_seed=cfg.train.seed + 1000 * state.epoch + rank,
        ):
            batches_this_epoch += 1
            metrics.batch_arrived()
            torch.manual_seed(_draw_seed(cfg.train.seed, rank, state.samples_seen))
            images = batch["image"].to(device, non_blocking=True)
            input_ids = batch["input_ids"].to(device, non_blocking=True)
            attention_mask = batch["attention_mask"].to(device, non_blocking=True)

            losses = engine(images, input_ids, attention_mask)
            engine.backward(losses["loss"])
            boundary = engine.is_gradient_accumulation_boundary()  # ask before step() moves on
            engine.step()
            metrics.on_batch(len(images), attention_mask)
            state.samples_seen += len(images) * world
            state.position.record(batch["url"], batch["key"])
            if keys_log is not None:
                keys_log.write(state.step + 1, batch["key"])
            if not boundary:
                continue
            state.step += 1
            update_momentum_encoder(engine.module, cfg.objectives.momentum)
            metrics.on_step()
            # A SIGTERM to the driver: this step is the last; checkpoint it and leave.
            stopping = stop.agreed()  # collective: all ranks stop at the same step

            at_end = state.step == last_step or stopping
            log_now = state.step % cfg.train.log_every == 0 or at_end
            save_now = state.step % cfg.checkpoint.every == 0 or at_end
            if log_now or save_now:  # collective; fresh books for the log row and the checkpoint
                counts = _shared_quality_counts(settings.quality_counter, rank)

            if log_now:
                values = _mean_across_ranks(losses)  # collective: every rank joins
                values["lr"] = engine.get_lr()[0]
                values["epoch"] = state.epoch
                values.update(counts, bad_fraction=quality.bad_fraction(counts))
                values.update(metrics.take_timing())  # this rank's step and data-wait seconds
                if progress is not None:
                    progress.log(state.step, state.samples_seen, values)
                metrics.on_log(values, engine.get_global_grad_norm(), counts)
                quality.check_bad_fraction(counts, cfg.data.max_bad_fraction)

            if save_now:
                average_buffers(engine.module)  # BatchNorm statistics of all ranks' data
                state.position = gather_position(state.position)  # what all ranks consumed
                # The data-quality books ride along, so Ray's result metrics carry them too.
                reported = {"loss": losses["loss"].item(), **counts}
                started = time.perf_counter()
                written = save_and_report(
                    engine, state, reported, rank, facts, storage, cfg.checkpoint.keep
                )
                metrics.on_checkpoint(time.perf_counter() - started, written)
                push_logs(cfg.run_dir, storage, rank, keys_path)

            periodic = has_val and cfg.eval.every and state.step % cfg.eval.every == 0
            # The last evaluation follows the loop; a stopping run saves and leaves.
            if periodic and state.step < cfg.train.max_steps and not stopping:
                metrics.on_eval(
                    _evaluate_and_report(
                        engine,
                        cfg,
                        tokenizer,
                        device,
                        state.step,
                        rank,
                        print_table=settings.eval_tables,
                    )
                )

            if state.step >= last_step or stopping:
                break
        else:
            # A resumed epoch may have nothing left (the checkpoint was at its last step).
            if batches_this_epoch == 0 and not state.position.started:
                raise EmptyEpochError(
                    f"data.train yields no full batch of data.batch_size={cfg.data.batch_size} "
                    f"per worker for {world} workers; add shards or lower data.batch_size"
                )
            state.next_epoch()

    # Held-out evaluation at the end (collective: every rank takes its stripe of the work);
    # not when train.stop_at paused the run early.
    if has_val and state.step >= cfg.train.max_steps:
        # The driver prints this one (mmpretrain/cli.py), after the run, from eval.json.
        results = _evaluate_and_report(
            engine, cfg, tokenizer, device, state.step, rank, print_table=False
        )
        metrics.on_eval(results)
        if rank == 0:
            (cfg.run_dir / "eval.json").write_text(json.dumps(results, indent=2))
    push_logs(cfg.run_dir, storage, rank, keys_path)


def _evaluate_and_report(
    engine: Any,
    cfg: RunConfig,
    tokenizer: Any,
    device: torch.device,
    step: int,
    rank: int,
    print_table: bool,
) -> dict[str, float]:
    """The same evaluation ``mmpretrain eval`` runs, on the live (possibly sharded) model.

    Rank 0 prints the table of a periodic evaluation (eval.every) as training goes; the final
    table is printed once, by the driver, after the run: forwarded worker output may arrive
    after the driver's own last lines, and the driver has the result in eval.json anyway.
    """
    average_buffers(engine.module)
    held_out = ray.train.get_dataset_shard("val").iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_batch
    )
    metrics = evaluate(engine.module.encoder, held_out, cfg, tokenizer, device)
    metrics["step"] = step
    if rank == 0:
        with (cfg.run_dir / "eval.jsonl").open("a") as history:
            history.write(json.dumps(metrics) + "\n")
        if print_table:
            console(format_table(metrics))
    ray.train.report(metrics)
    return metrics
