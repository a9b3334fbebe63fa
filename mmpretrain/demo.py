"""The demo: synthetic shards -> tokenizer -> a tiny 2-worker run -> held-out retrieval.

Everything lands under ``runs/`` in the working directory. The data and tokenizer are reused
when present (they are deterministic); each demo run gets a fresh, time-stamped run name so a
second ``make demo`` trains again instead of resuming a finished run.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from mmpretrain.config import load_config
from mmpretrain.data.synth import write_synthetic_shards
from mmpretrain.data.tokenizer import train_tokenizer
from mmpretrain.train.launch import TrainResult, run_training

DEMO_TRAIN_SAMPLES = 4096
DEMO_VAL_SAMPLES = 256
DEMO_SHARD_SIZE = 256
DEMO_VOCAB = 400
VAL_INDEX_OFFSET = 10**6  # held-out samples come from a disjoint index range
DATA_MARKER = "complete-v2"  # v2 shards carry cls labels; older demo data is rewritten
# Zero-shot prompts in the synthetic captions' own words ("a picture of a small red circle").
DEMO_PROMPT = "a picture of a {}"


def prepare_demo_data(root: Path, seed: int = 0) -> tuple[Path, Path, Path]:
    """Writes (once) train/val shards and a tokenizer under ``root``."""
    train_dir, val_dir, tokenizer_dir = root / "train", root / "val", root / "tokenizer"
    if not (train_dir / DATA_MARKER).exists():
        write_synthetic_shards(train_dir, DEMO_TRAIN_SAMPLES, DEMO_SHARD_SIZE, seed=seed)
        (train_dir / DATA_MARKER).touch()
    if not (val_dir / DATA_MARKER).exists():
        write_synthetic_shards(
            val_dir, DEMO_VAL_SAMPLES, DEMO_SHARD_SIZE, seed=seed, first_index=VAL_INDEX_OFFSET
        )
        (val_dir / DATA_MARKER).touch()
    if not (tokenizer_dir / "tokenizer.json").exists():
        train_tokenizer(str(train_dir), tokenizer_dir, vocab_size=DEMO_VOCAB)
    return train_dir, val_dir, tokenizer_dir


def run_demo(runs_dir: str = "runs", overrides: Sequence[str] = ()) -> TrainResult:
    root = Path(runs_dir).resolve()
    print(f"[demo] writing synthetic shards and a tokenizer under {root / 'demo-data'}")
    train_dir, val_dir, tokenizer_dir = prepare_demo_data(root / "demo-data")
    run_name = time.strftime("demo-%Y%m%d-%H%M%S")
    cfg = load_config(
        "tiny",
        [
            f"data.train={train_dir}",
            f"data.val={val_dir}",
            f"data.tokenizer={tokenizer_dir}",
            f"train.storage_path={root}",
            f"train.run_name={run_name}",
            f"eval.prompt_template={DEMO_PROMPT}",
            # Fixed data order and kernels; how far the numbers vary: README, "Reproducibility".
            "train.deterministic=true",
            *overrides,
        ],
    )
    print(
        f"[demo] training the tiny model on {cfg.train.num_workers} workers"
        f" for {cfg.train.max_steps} steps (run {run_name})"
    )
    return run_training(cfg)
