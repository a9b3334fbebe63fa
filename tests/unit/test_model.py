from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mmpretrain.config import DataConfig, load_config
from mmpretrain.data.synth import synth_sample
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.data.transforms import preprocess_rows
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
    batch, _ = preprocess_rows(
        raw, DataConfig(image_size=image_size, max_text_len=max_len, tokenizer=str(tokenizer_dir))
    )
    return {
        name: torch.from_numpy(batch[name]) for name in ("image", "input_ids", "attention_mask")
    }


def make_task(tokenizer_dir: Path, *overrides: str) -> PretrainingTask:
    cfg = load_config("tiny", list(overrides))
    tok = load_tokenizer(str(tokenizer_dir))
    tokens = TokenIds(tok.vocab_size, tok.pad_id, tok.cls_id, tok.sep_id, tok.mask_id)
    torch.manual_seed(0)
    return build_task(cfg.model, cfg.objectives, tokens, cfg.data.max_text_len)


OBJECTIVES = ("itc", "itm", "mlm", "text_mlm", "image_ssl")


def only(*active: str) -> list[str]:
    """Overrides giving the named objectives weight 1 and every other weight 0."""
    return [f"objectives.{name}={1 if name in active else 0}" for name in OBJECTIVES]


STEPS = 30


def start(history: list[dict[str, float]], name: str) -> float:
    return sum(h[name] for h in history[:5]) / 5


def settled(history: list[dict[str, float]], name: str) -> float:
    return sum(h[name] for h in history[-5:]) / 5


def train_fixed_batch(
    task: PretrainingTask, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-3
) -> list[dict[str, float]]:
    """Steps of AdamW on one batch; seeded each step so masks, negatives and views repeat."""
    torch.set_num_threads(2)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr)
    history = []
    for _ in range(steps):
        torch.manual_seed(1)
        out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        history.append({name: value.item() for name, value in out.items()})
    return history


def test_forward_returns_finite_loss_per_objective(synth_data) -> None:
    task = make_task(synth_data["tokenizer"])
    batch = make_batch(synth_data["tokenizer"], 8)
    out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    for name in ("loss", *(f"loss_{objective}" for objective in OBJECTIVES)):
        assert out[name].ndim == 0 and torch.isfinite(out[name]), name
    # At init ITC is near chance: log(batch) for each direction.
    assert out["loss_itc"].item() == pytest.approx(math.log(8), rel=0.25)
    weights = task.objectives
    weighted = sum(getattr(weights, name) * out[f"loss_{name}"] for name in OBJECTIVES)
    assert out["loss"].item() == pytest.approx(weighted.item(), rel=1e-6)


def test_zero_weight_skips_the_objective_and_builds_none_of_it(synth_data) -> None:
    task = make_task(synth_data["tokenizer"], *only("itc"))
    batch = make_batch(synth_data["tokenizer"], 4)
    out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert set(out) == {"loss", "loss_itc"}
    assert task.text_mlm_head is None and task.ssl_head is None and task.momentum_encoder is None


@pytest.mark.parametrize("fusion", ["cross_attention", "merged", "co_attention", "gated"])
def test_each_fusion_variant_learns_matching_and_masked_words(synth_data, fusion) -> None:
    task = make_task(synth_data["tokenizer"], f"model.fusion.type={fusion}", *only("itm", "mlm"))
    batch = make_batch(synth_data["tokenizer"], 8)
    gates: list[torch.Tensor] = []
    for module in task.encoder.fusion.modules():
        if type(module).__name__ == "ModalityGate":
            module.register_forward_hook(lambda _m, _i, out: gates.append(out.detach()))
    history = train_fixed_batch(task, batch, steps=STEPS)
    # ITM starts at log 2 and is the slower of the two to learn on one batch.
    for name, factor in (("loss_itm", 0.85), ("loss_mlm", 0.5)):
        assert settled(history, name) < factor * start(history, name), [h[name] for h in history]
    if fusion == "gated":
        # The gate starts at an even 0.5 everywhere and learns to weigh tokens differently.
        assert torch.allclose(gates[0], torch.full_like(gates[0], 0.5))
        assert gates[-1].std() > 1e-3 and ((gates[-1] > 0) & (gates[-1] < 1)).all()


@pytest.mark.parametrize(
    ("active", "extra"),
    [
        (("itc",), ()),
        (("itm",), ()),
        (("mlm",), ()),
        (("text_mlm",), ()),
        (("image_ssl",), ()),
        (("itc", "mlm"), ("objectives.distill=true",)),
    ],
    ids=["itc", "itm", "mlm", "text_mlm", "image_ssl", "distill"],
)
def test_each_objective_alone_lowers_its_loss(synth_data, active, extra) -> None:
    task = make_task(synth_data["tokenizer"], *only(*active), *extra)
    batch = make_batch(synth_data["tokenizer"], 8)
    history = train_fixed_batch(task, batch, steps=STEPS)
    for name in (f"loss_{objective}" for objective in active):
        first, last = start(history, name), settled(history, name)
        if name == "loss_image_ssl":  # a negative cosine in [-1, 1]: -1 is full agreement
            assert last < first - 0.3, (name, first, last)
        else:  # cross-entropies; ITM starts at log 2 and learns slowest
            assert last < (0.85 if name == "loss_itm" else 0.7) * first, (name, first, last)


def test_momentum_update_moves_the_copy_toward_the_online_encoder(synth_data) -> None:
    from mmpretrain.train.engine import update_momentum_encoder

    task = make_task(synth_data["tokenizer"], *only("itc"), "objectives.distill=true")
    online = dict(task.encoder.named_parameters())
    momentum = dict(task.momentum_encoder.named_parameters())
    assert not any(p.requires_grad for p in momentum.values())
    with torch.no_grad():
        for param in online.values():
            param.add_(1.0)
    before = {name: p.clone() for name, p in momentum.items()}
    update_momentum_encoder(task, 0.9)
    for name, param in momentum.items():
        expected = 0.9 * before[name] + 0.1 * online[name]
        assert torch.allclose(param, expected, atol=1e-6), name


def test_speed_switches_do_not_change_the_numbers(synth_data) -> None:
    batch = make_batch(synth_data["tokenizer"], 4)

    def loss_and_grad(*overrides: str) -> tuple[float, torch.Tensor]:
        task = make_task(synth_data["tokenizer"], *overrides)
        task.encoder.set_speed_options(
            channels_last="train.channels_last=true" in overrides,
            activation_checkpointing="train.activation_checkpointing=true" in overrides,
        )
        torch.manual_seed(1)
        out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
        out["loss"].backward()
        return out["loss"].item(), task.encoder.fusion.layers[0].ffn.up.weight.grad

    plain_loss, plain_grad = loss_and_grad()
    for switch in ("train.channels_last=true", "train.activation_checkpointing=true"):
        loss, grad = loss_and_grad(switch)
        assert loss == pytest.approx(plain_loss, rel=1e-4), switch
        assert torch.allclose(grad, plain_grad, atol=1e-5), switch


def test_base_preset_has_the_seed_papers_sizes_and_runs_a_step_on_cpu() -> None:
    cfg = load_config("base")
    torch.manual_seed(0)
    task = build_task(cfg.model, cfg.objectives, TokenIds(30522, 0, 101, 102, 103), 40)

    def millions(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    assert millions(task.encoder.vision.trunk) == pytest.approx(23.5, abs=0.1)  # ResNet-50
    assert millions(task.encoder.text) == pytest.approx(108.9, abs=0.2)  # BERT-base, no pooler
    assert millions(task.encoder.fusion) == pytest.approx(56.7, abs=0.2)  # 6 layers at 768
    images = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    ids = torch.randint(1000, 30000, (2, 40))
    ids[:, 0] = 101
    out = task(images, ids, torch.ones_like(ids))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    for module in (task.encoder.vision.trunk[0], task.encoder.fusion.layers[-1].ffn.down):
        assert module.weight.grad.abs().sum() > 0


def test_embeddings_are_unit_vectors_and_images_enter_as_uint8(synth_data) -> None:
    task = make_task(synth_data["tokenizer"])
    batch = make_batch(synth_data["tokenizer"], 4)
    assert batch["image"].dtype == torch.uint8
    _, image_emb = task.encoder.encode_image(batch["image"])
    _, text_emb = task.encoder.encode_text(batch["input_ids"], batch["attention_mask"])
    assert image_emb.shape == text_emb.shape == (4, 64)
    assert torch.allclose(image_emb.norm(dim=-1), torch.ones(4), atol=1e-5)
    assert torch.allclose(text_emb.norm(dim=-1), torch.ones(4), atol=1e-5)


def test_local_start_weights_load_and_mismatches_name_the_key(synth_data, tmp_path) -> None:
    from transformers import BertConfig, BertModel

    from mmpretrain.config import ConfigError
    from mmpretrain.model.vision import build_resnet

    cfg = load_config("tiny")
    torch.manual_seed(5)
    resnet_file = tmp_path / "resnet.pth"
    torch.save(build_resnet(cfg.model.vision).state_dict(), resnet_file)
    tok = load_tokenizer(str(synth_data["tokenizer"]))
    text = cfg.model.text
    bert = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=text.hidden_size,
            num_hidden_layers=text.layers,
            num_attention_heads=text.heads,
            intermediate_size=text.intermediate_size,
        ),
        add_pooling_layer=False,
    )
    bert.save_pretrained(tmp_path / "bert")

    task = make_task(
        synth_data["tokenizer"],
        f"model.vision.weights={resnet_file}",
        f"model.text.pretrained={tmp_path / 'bert'}",
    )
    saved_conv = torch.load(resnet_file, weights_only=True)["conv1.weight"]
    assert torch.equal(task.encoder.vision.trunk[0].weight, saved_conv)
    loaded = task.encoder.text.bert.embeddings.word_embeddings.weight
    assert torch.equal(loaded, bert.embeddings.word_embeddings.weight)

    with pytest.raises(ConfigError, match=r"model\.vision\.weights: .* does not fit"):
        make_task(synth_data["tokenizer"], "model.vision.depths=[2,2,2,2]",
                  f"model.vision.weights={resnet_file}")  # fmt: skip
    with pytest.raises(ConfigError, match=r"model\.text\.layers: got 3; allowed: 2, the num"):
        make_task(synth_data["tokenizer"], "model.text.layers=3",
                  f"model.text.pretrained={tmp_path / 'bert'}")  # fmt: skip
    with pytest.raises(ConfigError, match="never downloaded"):
        load_config("tiny", ["model.vision.weights=https://example.com/r50.pth"])


def test_fusion_width_may_differ_from_the_text_encoder(synth_data) -> None:
    task = make_task(synth_data["tokenizer"], "model.fusion.width=64", "model.fusion.type=gated")
    batch = make_batch(synth_data["tokenizer"], 4)
    out = task(batch["image"], batch["input_ids"], batch["attention_mask"])
    assert torch.isfinite(out["loss"])
    assert task.encoder.fusion.layers[0].ffn.up.in_features == 64
    assert task.encoder.text_to_fusion.in_features == 128  # BERT width -> fusion width


def test_simsiam_views_leave_batchnorm_statistics_to_real_images(synth_data) -> None:
    task = make_task(synth_data["tokenizer"], *only("image_ssl"))
    batch = make_batch(synth_data["tokenizer"], 8)
    norm = task.encoder.vision.trunk[1]  # the stem's BatchNorm
    before = norm.running_mean.clone()
    task(batch["image"], batch["input_ids"], batch["attention_mask"])
    # Only the real-image pass (encode_image) moved the statistics: one momentum step.
    pixels = task.encoder.vision.to_pixels(batch["image"])
    normalised = (pixels - task.encoder.vision.mean) / task.encoder.vision.std
    stem_out = task.encoder.vision.trunk[0](normalised)
    expected = (1 - norm.momentum) * before + norm.momentum * stem_out.mean(dim=(0, 2, 3))
    assert torch.allclose(norm.running_mean, expected, atol=1e-5)
