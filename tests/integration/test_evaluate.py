"""One short ZeRO-3 run with the switches whose code paths differ under ZeRO-3, and the
evaluation and export that must agree with it.

The run (2 workers) has activation checkpointing, momentum distillation (whose EMA update under
ZeRO-3 works on each rank's slice of the parameters) and the merged fusion variant; it
evaluates itself at the end. (bf16 runs in the stage-0 bad-data run instead: under ZeRO-3,
DeepSpeed's autocast all-gathers Linear and Conv weights in bf16, so the run's own evaluation
sees rounded weights and cannot be reproduced to 1e-4 from the fp32 checkpoint.)

``eval`` on the run directory, ``eval`` on an export, and a plain single-process pass through
``load_pretrained`` (no Ray, no DeepSpeed) must all reproduce the run's own numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import mmpretrain
from mmpretrain import cli
from mmpretrain.config import load_config
from mmpretrain.data.shards import expand_shards, iter_shard
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.evaluate.retrieval import retrieval_metrics
from mmpretrain.train.builder import build_training_task
from mmpretrain.train.checkpoint.consolidate import load_task_state
from mmpretrain.train.eval_job import run_evaluation
from mmpretrain.train.launch import run_training

pytestmark = pytest.mark.integration

PROMPT = "a picture of a {}"
SHAPES = 6  # classes of the synthetic set's cls labels


EVAL = ["train.cpus_per_worker=1", "eval.rerank_k=8", f"eval.prompt_template={PROMPT}"]


def same_numbers(expected: dict, metrics: dict) -> None:
    for name, value in expected.items():
        if name != "step":
            assert metrics[name] == pytest.approx(value, abs=1e-4), name


def exported(run_dir: Path, out: Path) -> Path:
    """`mmpretrain export` as a user types it, through the CLI's entry point."""
    assert cli.main(["export", "--checkpoint", str(run_dir), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {
        "model.safetensors", "config.yaml", "tokenizer", "export.json"
    }  # fmt: skip
    return out


def held_out_pairs(pattern: str) -> list[dict[str, bytes]]:
    """The held-out samples' members, read without Ray, in shard order."""
    return [members for path in expand_shards(pattern) for _, members in iter_shard(path)]


STEPS = 6


@pytest.fixture(scope="module")
def zero3_run(local_ray, synth_data, tmp_path_factory):
    cfg = load_config(
        "tiny",
        [
            f"data.train={synth_data['train']}",
            f"data.val={synth_data['val']}",
            f"data.tokenizer={synth_data['tokenizer']}",
            "data.batch_size=8",
            "train.zero_stage=3",
            "train.activation_checkpointing=true",
            "train.channels_last=false",
            "objectives.distill=true",
            "model.fusion.type=merged",
            f"train.max_steps={STEPS}",
            f"checkpoint.every={STEPS}",
            "train.log_every=1",
            "optim.warmup_steps=2",
            f"train.storage_path={tmp_path_factory.mktemp('zero3')}",
            "train.run_name=zero3",
            "train.cpus_per_worker=1",
            "eval.rerank_k=8",
            f"eval.prompt_template={PROMPT}",
        ],
    )
    return cfg, run_training(cfg)


def test_every_switch_trains_under_zero3_and_the_momentum_encoder_follows(zero3_run) -> None:
    cfg, result = zero3_run
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").open()]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert min(row["loss"] for row in rows[3:]) < rows[0]["loss"], [r["loss"] for r in rows]
    # The momentum encoder is saved with the model (merged from ZeRO-3 shards) and follows the
    # online one as an EMA (0.995 a step): it moved from the initial weights, far less than the
    # online encoder did. Were the ZeRO-3 update a no-op, it would still be the initial weights.
    state = load_task_state(result.run_dir / f"checkpoint_step_{STEPS:08d}")
    torch.manual_seed(cfg.train.seed)  # what every worker does before building the model
    initial = build_training_task(cfg, load_tokenizer(cfg.data.tokenizer)).state_dict()
    name = "encoder.image_proj.weight"
    online, momentum = state[name], state[f"momentum_{name}"]
    online_moved = (online - initial[name]).norm()
    momentum_moved = (momentum - initial[name]).norm()
    assert 0 < momentum_moved < 0.5 * online_moved, (momentum_moved, online_moved)


def test_eval_and_export_reproduce_the_runs_own_evaluation(zero3_run, synth_data, tmp_path):
    _, result = zero3_run
    shard_dir = result.run_dir / f"checkpoint_step_{STEPS:08d}" / f"step_{STEPS:08d}"
    # ZeRO-3 shards the parameters themselves: one model-state file per rank.
    assert {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt" for r in range(2)} <= {
        p.name for p in shard_dir.iterdir()
    }
    during_training = json.loads((result.run_dir / "eval.json").read_text())
    # Every metric family is there: retrieval at 1/5/10, ITM re-ranking, ITM, zero-shot.
    assert during_training["candidates"] == 96
    assert during_training["rerank_k"] == 8
    assert 0.0 <= during_training["itm_accuracy"] <= 1.0
    assert 0.0 <= during_training["itm_accuracy_hard"] <= 1.0
    assert during_training["zeroshot_classes"] == SHAPES
    assert during_training["zeroshot_samples"] == 96
    assert during_training["zeroshot_chance@1"] == pytest.approx(1 / SHAPES)
    assert "i2t_rerank_recall@10" in during_training and "t2i_recall@10" in during_training

    # 1. `eval` on the run directory: ZeRO-3 shards merged on the driver, 2 Ray workers.
    same_numbers(during_training, run_evaluation(result.run_dir, str(synth_data["val"]), EVAL))

    # 2. `export` as a user types it (through the CLI's entry point), and load_pretrained on it
    # in this process, from raw JPEG bytes and caption strings: the same embeddings as the
    # workers computed, hence the same recall (`eval` on the export: the slow test below).
    export_dir = exported(result.run_dir, tmp_path / "export")
    model = mmpretrain.load_pretrained(export_dir, device="cpu")
    pairs = held_out_pairs(str(synth_data["val"]))
    image_emb = model.embed_images([members["jpg"] for members in pairs])
    text_emb = model.embed_texts([members["txt"].decode() for members in pairs])
    plain = retrieval_metrics(image_emb, text_emb, (1, 5, 10))
    for name, value in plain.items():
        assert value == pytest.approx(during_training[name], abs=1e-4), name
    similarity = model.similarity([pairs[0]["jpg"]], [pairs[0]["txt"].decode()])
    assert similarity.item() == pytest.approx((image_emb[0] @ text_emb[0]).item(), abs=1e-5)
    match = model.match([members["jpg"] for members in pairs[:4]], ["a picture"] * 4)
    assert match.shape == (4,) and ((match > 0) & (match < 1)).all()


@pytest.mark.slow  # the export's numbers are checked in this process above
def test_eval_on_an_export_reproduces_the_runs_own_evaluation(zero3_run, synth_data, tmp_path):
    _, result = zero3_run
    during_training = json.loads((result.run_dir / "eval.json").read_text())
    export_dir = exported(result.run_dir, tmp_path / "export")
    same_numbers(during_training, run_evaluation(export_dir, str(synth_data["val"]), EVAL))
