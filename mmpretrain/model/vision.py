"""ResNet visual encoder producing region tokens for the fusion module.

The last stage's feature map is a grid of regions; each becomes a token, and their mean is
prepended as a global token (the CLS of the image) that ITC embeds.
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from mmpretrain.config import VisionConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BLOCKS = {
    "resnet18": BasicBlock,
    "resnet34": BasicBlock,
    "resnet50": Bottleneck,
    "resnet101": Bottleneck,
    "resnet152": Bottleneck,
}


def build_resnet(cfg: VisionConfig) -> ResNet:
    """A randomly initialised torchvision ResNet; ``depths`` shrinks it for CPU-sized presets."""
    if cfg.depths is None:
        return getattr(torchvision.models, cfg.name)(weights=None)
    return ResNet(BLOCKS[cfg.name], list(cfg.depths))


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
        self.region_proj = nn.Linear(resnet.fc.in_features, width)
        self.norm = nn.LayerNorm(width)
        # Normalisation lives on the device so uint8 images cross the data path (4x smaller).
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images_BHWC: torch.Tensor) -> torch.Tensor:
        """uint8 ``[B, H, W, 3]`` images -> ``[B, 1 + regions, width]`` tokens (global first)."""
        pixels_BCHW = images_BHWC.permute(0, 3, 1, 2).to(self.mean.dtype).div(255.0)
        pixels_BCHW = (pixels_BCHW - self.mean) / self.std
        fmap_BCHW = self.trunk(pixels_BCHW.contiguous(memory_format=torch.channels_last))
        regions_BNC = fmap_BCHW.flatten(2).transpose(1, 2)
        regions_BND = self.region_proj(regions_BNC)
        tokens_BND = torch.cat([regions_BND.mean(dim=1, keepdim=True), regions_BND], dim=1)
        return self.norm(tokens_BND)
