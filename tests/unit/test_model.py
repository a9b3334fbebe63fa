from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpretrain.config import load_config
from mmpretrain.data.synth import synth_sample
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.data.transforms import SampleRules, preprocess_rows
from mmpretrain.model import PretrainingTask, TokenIds, build_task


def make_batch(
    tokenizer_dir: Path, size: int, image_size: int = 64, max_len: int = 32
) -> dict[str, torch.Tensor]:
    samples = [synth_sample(index, seed=3, side=96) for index in range(size)]
    raw = {
        "__key__": np.array([f"{i:04d}" for i in range(size)]),
        "jpg": np.array([jpeg for jpeg, _ in samples], dtype=object),
        "txt": np.array([caption.encode() for _, caption in samples], dtype=object),
    }
    batch, _ = preprocess_rows(raw, SampleRules(image_size, max_len, str(tokenizer_dir)))
    return {
        name: torch.from_numpy(batch[name]) for name in ("image", "input_ids", "attention_mask")
    }


def make_task(tokenizer_dir: Path, *overrides: str) -> PretrainingTask:
    cfg = load_config("tiny", list(overrides))
    tok = load_tokenizer(str(tokenizer_dir))
    tokens = TokenIds(tok.vocab_size, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id)
    torch.manual_seed(0)
    return build_task(cfg.model, cfg.objectives, tokens, cfg.data.max_text_len)


def test_forward_returns_finite_loss_per_objective(synth_data) -> None:
    task = make_task(synth_data["tokenizer"])
    batch = make_batch(synth_data["tokenizer"], 8)
    out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    for name in ("loss", "loss_itc", "loss_itm", "loss_mlm"):
        assert out[name].ndim == 0 and torch.isfinite(out[name]), name
    # At init ITC is near chance: log(batch) for each direction.
    assert out["loss_itc"].item() == pytest.approx(math.log(8), rel=0.25)
    weighted = out["loss_itc"] + out["loss_itm"] + out["loss_mlm"]
    assert out["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)


def test_zero_weight_skips_the_objective(synth_data) -> None:
    task = make_task(synth_data["tokenizer"], "objectives.itm=0", "objectives.mlm=0")
    batch = make_batch(synth_data["tokenizer"], 4)
    out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert set(out) == {"loss", "loss_itc"}


def test_overfitting_one_batch_drives_the_loss_down(synth_data) -> None:
    torch.set_num_threads(2)
    task = make_task(synth_data["tokenizer"])
    batch = make_batch(synth_data["tokenizer"], 8)
    optimizer = torch.optim.AdamW(task.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        torch.manual_seed(1)  # same masks and negatives each step: truly one fixed input
        out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0] / 20, losses[::5]


def test_embeddings_are_unit_vectors_and_images_enter_as_uint8(synth_data) -> None:
    task = make_task(synth_data["tokenizer"])
    batch = make_batch(synth_data["tokenizer"], 4)
    assert batch["image"].dtype == torch.uint8
    image_emb, text_emb = task.embed(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert image_emb.shape == text_emb.shape == (4, 64)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(text_emb.norm(dim=-1), torch.ones(4), atol=1e-5)
