"""The image-only objective: SimSiam agreement between two augmented views of one image.

Views are made on the device, batched, from the uint8 images the pipeline already delivers, so
the data path stays one image per sample and the augmentation costs no CPU time on the hosts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CROP_SCALE = (0.25, 1.0)  # share of the image area kept by the random crop
CROP_RATIO = (3 / 4, 4 / 3)
JITTER_PROBABILITY = 0.8
JITTER_STRENGTH = 0.4  # brightness, contrast and saturation factors in [0.6, 1.4]
GREYSCALE_PROBABILITY = 0.2


def _uniform(low: float, high: float, count: int, device: torch.device) -> torch.Tensor:
    return torch.empty(count, device=device).uniform_(low, high)


def random_view(pixels_BCHW: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """One random crop resized to ``size`` (default: the input's), flip, colour jitter and
    greyscale per image ([0, 1] pixels).

    The crop and flip are one affine sampling grid per image (``grid_sample``), so the whole
    batch is augmented in a few kernels instead of a Python loop over images. Views smaller
    than the input (as DINO's local crops) make the two extra trunk passes cheaper.
    """
    batch, device = pixels_BCHW.shape[0], pixels_BCHW.device
    area_B = _uniform(*CROP_SCALE, batch, device)
    log_ratio_B = _uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]), batch, device)
    width_B = torch.sqrt(area_B * log_ratio_B.exp()).clamp(max=1.0)
    height_B = torch.sqrt(area_B / log_ratio_B.exp()).clamp(max=1.0)
    centre_x_B = (torch.rand(batch, device=device) * 2 - 1) * (1 - width_B)
    centre_y_B = (torch.rand(batch, device=device) * 2 - 1) * (1 - height_B)
    flip_B = torch.where(torch.rand(batch, device=device) < 0.5, -1.0, 1.0)
    theta_B23 = torch.zeros(batch, 2, 3, device=device, dtype=pixels_BCHW.dtype)
    theta_B23[:, 0, 0] = width_B * flip_B
    theta_B23[:, 0, 2] = centre_x_B
    theta_B23[:, 1, 1] = height_B
    theta_B23[:, 1, 2] = centre_y_B
    side = size or pixels_BCHW.shape[-1]
    grid = F.affine_grid(theta_B23, [batch, pixels_BCHW.shape[1], side, side], align_corners=False)
    view_BCHW = F.grid_sample(pixels_BCHW, grid, mode="bilinear", align_corners=False)

    def factor() -> torch.Tensor:
        jitter_B = _uniform(1 - JITTER_STRENGTH, 1 + JITTER_STRENGTH, batch, device)
        apply_B = torch.rand(batch, device=device) < JITTER_PROBABILITY
        return torch.where(apply_B, jitter_B, 1.0).view(batch, 1, 1, 1).to(view_BCHW.dtype)

    grey_B1HW = (view_BCHW * view_BCHW.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(
        dim=1, keepdim=True
    )
    view_BCHW = view_BCHW * factor()  # brightness
    mean_B111 = grey_B1HW.mean(dim=(2, 3), keepdim=True)
    view_BCHW = (view_BCHW - mean_B111) * factor() + mean_B111  # contrast
    view_BCHW = grey_B1HW + (view_BCHW - grey_B1HW) * factor()  # saturation
    to_grey_B = (torch.rand(batch, device=device) < GREYSCALE_PROBABILITY).view(batch, 1, 1, 1)
    view_BCHW = torch.where(to_grey_B, grey_B1HW.expand_as(view_BCHW), view_BCHW)
    return view_BCHW.clamp(0.0, 1.0)


class SimSiamHead(nn.Module):
    """Projector and predictor of SimSiam (Chen & He, 2021), sized down by ``dim``."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.projector = nn.Sequential(
            nn.Linear(in_dim, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, dim // 4, bias=False),
            nn.BatchNorm1d(dim // 4),
            nn.ReLU(inplace=True),
            nn.Linear(dim // 4, dim),
        )

    def forward(self, features_BC: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (projection z, prediction p)."""
        projection_BD = self.projector(features_BC)
        return projection_BD, self.predictor(projection_BD)


def simsiam_loss(
    prediction1_BD: torch.Tensor,
    prediction2_BD: torch.Tensor,
    projection1_BD: torch.Tensor,
    projection2_BD: torch.Tensor,
) -> torch.Tensor:
    """Negative cosine of each view's prediction against the other's stopped projection.

    The stop-gradient is what keeps SimSiam from collapsing to a constant without negatives.
    Ranges over [-1, 1]; -1 is perfect agreement.
    """

    def agreement(prediction_BD: torch.Tensor, projection_BD: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(prediction_BD, projection_BD.detach(), dim=-1).mean()

    return (
        -(agreement(prediction1_BD, projection2_BD) + agreement(prediction2_BD, projection1_BD)) / 2
    )
