"""The fusion registry: one class per ``model.fusion.type``, each building and fusing on its own."""

from __future__ import annotations

import pytest
import torch

from mmpretrain.config import FUSION_TYPES, FusionConfig
from mmpretrain.model.fusion import FUSION_VARIANTS, FusionModule, build_fusion

BATCH, TEXT_LEN, IMAGE_TOKENS, WIDTH, HEADS, LAYERS = 2, 6, 4, 16, 2, 2


def inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    text_BLD = torch.randn(BATCH, TEXT_LEN, WIDTH, generator=generator)
    image_BND = torch.randn(BATCH, IMAGE_TOKENS, WIDTH, generator=generator)
    mask_BL = torch.ones(BATCH, TEXT_LEN, dtype=torch.long)
    mask_BL[1, 3:] = 0
    return text_BLD, mask_BL, image_BND


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
