"""The fusion variants: one class per ``model.fusion.type`` behind a registry, each building and
fusing on its own; and recording their text -> image attention for reports (right shape,
proper probabilities, no change to what the module computes)."""

from __future__ import annotations

import pytest
import torch

from mmpretrain.config import FUSION_TYPES, FusionConfig, load_config
from mmpretrain.data.tokenizer import load_tokenizer
from mmpretrain.model import FusedEncoder
from mmpretrain.model.fusion import FUSION_VARIANTS, FusionModule, build_fusion
from mmpretrain.train.builder import token_ids

BATCH, TEXT_LEN, IMAGE_TOKENS, WIDTH, HEADS, LAYERS = 3, 7, 5, 32, 4, 2


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    text_BLD = torch.randn(BATCH, TEXT_LEN, WIDTH, generator=generator)
    image_BND = torch.randn(BATCH, IMAGE_TOKENS, WIDTH, generator=generator)
    mask_BL = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    mask_BL[1, 4:] = 0  # a padded caption: its padding must not change the image rows
    return text_BLD, mask_BL, image_BND


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_recorded_attention_is_a_distribution_over_image_tokens(fusion: str) -> None:
    torch.manual_seed(0)
    module = build_fusion(FusionConfig(type=fusion, layers=LAYERS, heads=HEADS), WIDTH).eval()
    text_BLD, mask_BL, image_BND = inputs()
    with torch.no_grad():
        fused_BLD, attention_BXHLN = module.forward_with_attention(text_BLD, mask_BL, image_BND)
        plain_BLD = module(text_BLD, mask_BL, image_BND)

    assert attention_BXHLN.shape == (BATCH, LAYERS, HEADS, TEXT_LEN, IMAGE_TOKENS)
    assert (attention_BXHLN >= 0).all()
    torch.testing.assert_close(
        attention_BXHLN.sum(dim=-1), torch.ones(BATCH, LAYERS, HEADS, TEXT_LEN)
    )
    # Not uniform: the maps come from the real queries and keys, not a placeholder.
    assert attention_BXHLN.std(dim=-1).mean() > 1e-3
    # Recording computes the same attention as the fused kernel, then switches itself off.
    torch.testing.assert_close(fused_BLD, plain_BLD, atol=1e-5, rtol=1e-5)
    for attention in module.text_to_image_attention_modules():
        assert not attention.record and attention.recorded is None


def test_merged_attention_is_the_text_rows_over_the_image_columns() -> None:
    torch.manual_seed(0)
    module = build_fusion(FusionConfig(type="merged", layers=1, heads=HEADS), WIDTH).eval()
    text_BLD, mask_BL, image_BND = inputs()
    joint = module.text_to_image_attention_modules()[0]
    joint.record = True
    with torch.no_grad():
        module(text_BLD, mask_BL, image_BND)
    full_BHTT = joint.recorded
    joint.record = False
    with torch.no_grad():
        _, attention_BXHLN = module.forward_with_attention(text_BLD, mask_BL, image_BND)

    block_BHLN = full_BHTT[:, :, :TEXT_LEN, TEXT_LEN:]
    expected = block_BHLN / block_BHLN.sum(dim=-1, keepdim=True)
    torch.testing.assert_close(attention_BXHLN[:, 0], expected)
    # Padded caption tokens receive no attention in the joint sequence.
    assert full_BHTT[1, :, :, 4:TEXT_LEN].abs().max() == 0


def test_encoder_attention_covers_the_global_token_and_the_feature_map_grid(synth_data) -> None:
    cfg = load_config("tiny", ["model.fusion.type=gated"])
    tokenizer = load_tokenizer(str(synth_data["tokenizer"]))
    torch.manual_seed(0)
    encoder = FusedEncoder(cfg.model, token_ids(tokenizer), cfg.data.max_text_len).eval()
    size = cfg.data.image_size
    images = torch.randint(0, 256, (2, size, size, 3), dtype=torch.uint8)
    ids, mask = (torch.from_numpy(a) for a in tokenizer.encode(["a red circle"] * 2, 32))
    with torch.no_grad():
        image_BND, _ = encoder.encode_image(images)
        text_BLD, _ = encoder.encode_text(ids, mask)
        fused_BLD, attention_BXHLN = encoder.fuse_with_attention(text_BLD, mask, image_BND)
        torch.testing.assert_close(fused_BLD, encoder.fuse(text_BLD, mask, image_BND))

    grid = size // 32  # ResNet's last stage is 1/32 of the input side
    fusion = cfg.model.fusion
    assert attention_BXHLN.shape == (2, fusion.layers, fusion.heads, 32, 1 + grid * grid)
    torch.testing.assert_close(attention_BXHLN.sum(dim=-1), torch.ones(attention_BXHLN.shape[:-1]))


# The registry: one class per model.fusion.type, each building and fusing on its own.


def test_registry_covers_exactly_the_configurable_types() -> None:
    assert set(FUSION_VARIANTS) == set(FUSION_TYPES)
    assert len(set(FUSION_VARIANTS.values())) == len(FUSION_VARIANTS)  # one class per type
    for variant in FUSION_VARIANTS.values():
        assert issubclass(variant, FusionModule) and variant is not FusionModule


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_each_variant_builds_and_fuses_text_with_the_image(fusion: str) -> None:
    torch.manual_seed(0)
    module = build_fusion(FusionConfig(type=fusion, layers=LAYERS, heads=HEADS), WIDTH).eval()
    assert type(module) is FUSION_VARIANTS[fusion]
    assert len(module.layers) == LAYERS
    assert len(module.text_to_image_attention_modules()) == LAYERS
    text_BLD, mask_BL, image_BND = inputs()
    with torch.no_grad():
        fused_BLD = module(text_BLD, mask_BL, image_BND)
        other_image_BLD = module(text_BLD, mask_BL, image_BND.flip(0))

    assert fused_BLD.shape == (BATCH, TEXT_LEN, WIDTH)
    assert torch.isfinite(fused_BLD).all()
    # The image reaches the text: swapping the pair's images changes the fused tokens.
    assert (fused_BLD - other_image_BLD).abs().max() > 1e-4


@pytest.mark.parametrize("fusion", FUSION_TYPES)
def test_activation_checkpointing_changes_no_output_or_gradient(fusion: str) -> None:
    cfg = FusionConfig(type=fusion, layers=LAYERS, heads=HEADS, dropout=0.0)
    torch.manual_seed(0)
    module = build_fusion(cfg, WIDTH).train()
    text_BLD, mask_BL, image_BND = inputs()

    # None where a parameter cannot reach the text output (co_attention's last image stream).
    def output_and_grads(checkpointing: bool) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        module.zero_grad()
        module.activation_checkpointing = checkpointing
        fused_BLD = module(text_BLD, mask_BL, image_BND)
        fused_BLD.square().mean().backward()
        return fused_BLD.detach(), [
            None if p.grad is None else p.grad.clone() for p in module.parameters()
        ]

    plain_BLD, plain_grads = output_and_grads(False)
    ckpt_BLD, ckpt_grads = output_and_grads(True)
    torch.testing.assert_close(ckpt_BLD, plain_BLD)
    for ckpt, plain in zip(ckpt_grads, plain_grads, strict=True):
        assert (ckpt is None) == (plain is None)
        if plain is not None:
            torch.testing.assert_close(ckpt, plain)
    assert any(grad is not None and grad.abs().max() > 0 for grad in plain_grads)


def test_an_unregistered_type_names_the_key_and_the_registered_ones() -> None:
    cfg = FusionConfig(layers=1, heads=HEADS)
    cfg.type = "perceiver"  # past config validation, as a hand-edited object would be
    with pytest.raises(ValueError, match=r"model\.fusion\.type: got 'perceiver'.*co_attention"):
        build_fusion(cfg, WIDTH)
