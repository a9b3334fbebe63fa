"""ResNet visual encoder producing region tokens for the fusion module.

The last stage's feature map is a grid of regions; each becomes a token, and their mean is
prepended as a global token (the CLS of the image) that ITC embeds. The pooled trunk features
also feed the image-only SimSiam objective.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mmpretrain.config import ConfigError, VisionConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCKS = {
    "resnet18": BasicBlock,
    "resnet34": BasicBlock,
    "resnet50": Bottleneck,
    "resnet101": Bottleneck,
    "resnet152": Bottleneck,
}


def read_resnet_state(path: str) -> dict[str, torch.Tensor]:
    """The state dict in a local ``model.vision.weights`` file (bare, or under "state_dict" as
    training checkpoints keep it); an unusable file is a ConfigError naming the key."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.vision.weights: {path!r} is not a file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike: the file is not usable
        raise ConfigError(f"model.vision.weights: cannot read {path!r}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ConfigError(
            f"model.vision.weights: {path!r} does not hold a state dict (names -> tensors)"
        )
    return state


def load_resnet_weights(resnet: ResNet, path: str) -> None:
    """A local torchvision state dict into ``resnet``; a mismatch names what did not fit."""
    state = read_resnet_state(path)
    result = resnet.load_state_dict(state, strict=False)
    missing = [key for key in result.missing_keys if not key.startswith("fc.")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"model.vision.weights: {path!r} does not fit the configured ResNet "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}); "
            "check model.vision.name and model.vision.depths"
        )


def build_resnet(cfg: VisionConfig) -> ResNet:
    """A torchvision ResNet: random init, or ``weights`` from a local file; never a download."""
    if cfg.depths is None:
        resnet = getattr(torchvision.models, cfg.name)(weights=None)
    else:
        resnet = ResNet(BLOCKS[cfg.name], list(cfg.depths))
    if cfg.weights:
        load_resnet_weights(resnet, cfg.weights)
    return resnet


class VisionEncoder(nn.Module):
    def __init__(self, cfg: VisionConfig, width: int):
        super().__init__()
        resnet = build_resnet(cfg)
        self.trunk = nn.Sequential(
            resnet.conv1,
            resnet.bn1,
            resnet.relu,
            resnet.maxpool,
            resnet.layer1,
            resnet.layer2,
            resnet.layer3,
            resnet.layer4,
        )
        self.trunk_width = resnet.fc.in_features
        self.region_proj = nn.Linear(self.trunk_width, width)
        self.norm = nn.LayerNorm(width)
        self.channels_last = True
        # Normalisation lives on the device so uint8 images cross the data path (4x smaller).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def to_pixels(self, images_BHWC: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` in [0, 1] (what augmentations use)."""
        return images_BHWC.permute(0, 3, 1, 2).to(self.mean.dtype).div(255.0)

    def feature_map(self, pixels_BCHW: torch.Tensor) -> torch.Tensor:
        """[0, 1] pixels -> the last stage's ``[B, C, h, w]`` map."""
        pixels_BCHW = (pixels_BCHW - self.mean) / self.std
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        return self.trunk(pixels_BCHW.contiguous(memory_format=memory_format))

    def pooled(self, pixels_BCHW: torch.Tensor, track_statistics: bool = True) -> torch.Tensor:
        """Globally pooled trunk features ``[B, C]`` (the SimSiam backbone output).

        ``track_statistics=False`` normalises with the batch's own statistics as usual but
        leaves BatchNorm's running averages alone: augmented views (smaller, cropped, colour
        jittered) would otherwise drag the statistics that evaluation uses away from what real
        images look like.
        """
        if track_statistics:
            return self.feature_map(pixels_BCHW).mean(dim=(2, 3))
        norms = [m for m in self.trunk.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        saved = [m.momentum for m in norms]
        for norm in norms:
            norm.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        try:
            return self.feature_map(pixels_BCHW).mean(dim=(2, 3))
        finally:
            for norm, momentum in zip(norms, saved, strict=True):
                norm.momentum = momentum

    def forward(self, images_BHWC: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` images -> ``[B, 1 + regions, width]`` tokens (global first)."""
        fmap_BCHW = self.feature_map(self.to_pixels(images_BHWC))
        regions_BNC = fmap_BCHW.flatten(2).transpose(1, 2)
        regions_BND = self.region_proj(regions_BNC)
        tokens_BND = torch.cat([regions_BND.mean(dim=1, keepdim=True), regions_BND], dim=1)
        return self.norm(tokens_BND)
