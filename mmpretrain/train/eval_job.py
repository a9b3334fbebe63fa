"""``mmpretrain eval``: evaluate a run, checkpoint or export on held-out shards, data-parallel on
Ray Train workers, with the same code the training run uses for its own evaluations.

The driver merges the weights once (ZeRO-3 shards included) and puts them in Ray's object
store; every worker builds the encoder from the saved config and loads them, so workers need no
access to the checkpoint's file system.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import ray
import ray.train
from ray.data import DataContext, ExecutionOptions
from ray.train.torch import TorchTrainer

from mmpretrain.config import RunConfig, config_from_dict
from mmpretrain.console import Ticker, elapsed_status
from mmpretrain.data.pipeline import build_dataset, collate_batch
from mmpretrain.data.shards import expand_shards
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.evaluate.heldout import evaluate
from mmpretrain.train.builder import build_encoder
from mmpretrain.train.checkpoint.consolidate import (
    load_encoder_state,
    resolve_weights,
    source_config,
)
from mmpretrain.train.launch import check_resources, connect
from mmpretrain.train.quiet import quiet_worker, train_logging

RESULT_FILE = "metrics.json"


def eval_loop_per_worker(loop_config: dict[str, Any]) -> None:
    import torch

    cfg: RunConfig = config_from_dict(loop_config["config"])
    quiet_worker(cfg.observe.verbose)
    device = ray.train.torch.get_device() if cfg.train.use_gpu else torch.device("cpu")
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    encoder = build_encoder(cfg, tokenizer)
    encoder.load_state_dict(ray.get(loop_config["weights"]))
    held_out = ray.train.get_dataset_shard("val").iter_torch_batches(
        batch_size=cfg.data.batch_size, collate_fn=collate_batch
    )
    metrics = evaluate(encoder.to(device), held_out, cfg, tokenizer, device)
    # Ray Train V2 hands the driver only metrics that come with a checkpoint, so rank 0 attaches
    # a small one holding the results (every rank has the same metrics).
    with tempfile.TemporaryDirectory(prefix="mmpretrain-eval-result-") as folder:
        checkpoint = None
        if ray.train.get_context().get_world_rank() == 0:
            (Path(folder) / RESULT_FILE).write_text(json.dumps(metrics, indent=2))
            checkpoint = ray.train.Checkpoint.from_directory(folder)
        ray.train.report(metrics, checkpoint=checkpoint)


def run_evaluation(
    checkpoint: str | Path, data: str, overrides: list[str] | tuple[str, ...] = ()
) -> dict[str, float]:
    """Metrics of the weights at ``checkpoint`` on the shards matching ``data``."""
    source = resolve_weights(checkpoint)
    cfg = source_config(source, [*overrides, f"data.val={data}"])
    shards = expand_shards(cfg.data.val)  # a bad pattern fails here, before Ray starts
    weights = load_encoder_state(source)

    connect(cfg)
    check_resources(cfg)
    DataContext.get_current().enable_progress_bars = False
    with tempfile.TemporaryDirectory(prefix="mmpretrain-eval-") as storage:
        trainer = TorchTrainer(
            eval_loop_per_worker,
            train_loop_config={"config": cfg.to_dict(), "weights": ray.put(weights)},
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.train.min_workers,
                use_gpu=cfg.train.use_gpu,
                resources_per_worker={"CPU": cfg.train.cpus_per_worker},
            ),
            run_config=ray.train.RunConfig(
                name="eval", storage_path=storage, logging_config=train_logging(cfg.observe.verbose)
            ),
            datasets={"val": build_dataset(shards, cfg.data)},
            dataset_config=ray.train.DataConfig(
                datasets_to_split=[],
                execution_options={"val": ExecutionOptions(preserve_order=True)},
            ),
        )
        status = elapsed_status(f"eval: {len(shards)} shards on {cfg.train.min_workers} workers")
        with Ticker(status):
            result = trainer.fit()
        if result.checkpoint is None:
            raise RuntimeError("the evaluation workers reported no results")
        with result.checkpoint.as_directory() as folder:
            return json.loads((Path(folder) / RESULT_FILE).read_text())
