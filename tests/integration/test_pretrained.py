"""A pretrained BERT folder trains end to end: its config.json sets the text tower's shape, its
own tokenizer is used, and the workers start from its weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertModel

from mmpretrain.config import load_config
from mmpretrain.data.tokenizer import load_tokenizer, train_tokenizer
from mmpretrain.train.checkpoint.consolidate import load_task_state
from mmpretrain.train.launch import run_training

# A run of its own for three steps; the folder checks and the BERT-shape adoption are unit tests.
pytestmark = [pytest.mark.integration, pytest.mark.slow]

HIDDEN = 64  # the tiny preset says 128; the folder must win
STEPS = 3


def test_tiny_preset_trains_from_a_pretrained_bert_folder(local_ray, synth_data, tmp_path) -> None:
    folder = tmp_path / "small-bert"
    train_tokenizer(str(synth_data["train"]), folder, vocab_size=300)
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=load_tokenizer(str(folder)).vocab_size,
            hidden_size=HIDDEN,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=64,
        ),
        add_pooling_layer=False,
    )
    bert.save_pretrained(folder)

    cfg = load_config(
        "tiny",
        [
            f"data.train={synth_data['train']}",
            "data.batch_size=8",
            f"model.text.pretrained={folder}",  # no model.text.* sizes, no data.tokenizer
            "train.num_workers=1",
            "train.cpus_per_worker=1",
            f"train.max_steps={STEPS}",
            f"checkpoint.every={STEPS}",
            "train.log_every=1",
            "optim.warmup_steps=1",
            f"train.storage_path={tmp_path / 'runs'}",
            "train.run_name=pretrained",
        ],
    )
    result = run_training(cfg)

    rows = [
        json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert [row["step"] for row in rows] == list(range(1, STEPS + 1))
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in rows)

    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["model"]["text"]["hidden_size"] == HIDDEN
    assert (saved["model"]["text"]["layers"], saved["model"]["text"]["heads"]) == (1, 2)
    assert saved["data"]["tokenizer"] == str(folder)  # the folder's own tokenizer
    assert not (result.run_dir / "tokenizer").exists()  # so none was trained
    assert load_config(result.run_dir / "config.yaml").model.text.hidden_size == HIDDEN

    # The workers started from the folder's weights: 3 small steps leave them close to it, far
    # from any random initialisation.
    state = load_task_state(Path(result.checkpoint))
    key = "encoder.text.bert.embeddings.position_embeddings.weight"
    start = bert.embeddings.position_embeddings.weight.detach()
    assert state[key].shape == start.shape
    assert torch.allclose(state[key].float(), start, atol=0.05)
