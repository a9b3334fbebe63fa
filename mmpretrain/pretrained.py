"""``mmpretrain.load_pretrained(DIR)``: an exported model that embeds images and texts and
scores pairs, on CPU or GPU, with no Ray and no DeepSpeed.

Images go through the same centre crop as training (``data.image_size``) and captions through
the exported tokenizer, so an embedding here equals the one evaluation computed.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from mmpretrain.config import RunConfig
from mmpretrain.data.tokenizer import CaptionTokenizer, load_tokenizer
from mmpretrain.data.transforms import centre_square, flatten_to_rgb
from mmpretrain.model import FusedEncoder
from mmpretrain.train.builder import build_encoder
from mmpretrain.train.checkpoint.consolidate import (
    load_encoder_state,
    resolve_weights,
    source_config,
)

ImageInput = Image.Image | str | Path | bytes | np.ndarray


class PretrainedModel:
    """A trained fused encoder with its tokenizer and preprocessing."""

    def __init__(
        self,
        encoder: FusedEncoder,
        tokenizer: CaptionTokenizer,
        config: RunConfig,
        device: torch.device,
    ):
        self.encoder = encoder.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.device = device

    def images_to_tensor(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """PIL images, paths, encoded bytes or HxWx3 arrays -> uint8 ``[N, S, S, 3]``."""
        if isinstance(images, torch.Tensor):
            return images.to(torch.uint8)
        size = self.config.data.image_size
        arrays = []
        for image in images:
            if isinstance(image, np.ndarray):
                image = Image.fromarray(image)
            elif isinstance(image, str | Path):
                image = Image.open(image)
            elif isinstance(image, bytes):
                image = Image.open(io.BytesIO(image))
            arrays.append(centre_square(flatten_to_rgb(image), size))
        return torch.from_numpy(np.stack(arrays))

    def _texts(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenizer.encode(list(texts), self.config.data.max_text_len)
        return torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)

    @torch.no_grad()
    def embed_images(self, images: Sequence[ImageInput] | torch.Tensor) -> torch.Tensor:
        """Unit ITC embeddings ``[N, E]``."""
        _, emb = self.encoder.encode_image(self.images_to_tensor(images).to(self.device))
        return emb

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit ITC embeddings ``[N, E]``."""
        _, emb = self.encoder.encode_text(*self._texts(texts))
        return emb

    @torch.no_grad()
    def similarity(
        self, images: Sequence[ImageInput] | torch.Tensor, texts: Sequence[str]
    ) -> torch.Tensor:
        """Cosine similarity ``[images, texts]`` in the ITC space (fast, for ranking many)."""
        return self.embed_images(images) @ self.embed_texts(texts).T

    @torch.no_grad()
    def match(
        self, images: Sequence[ImageInput] | torch.Tensor, texts: Sequence[str]
    ) -> torch.Tensor:
        """ITM probability ``[N]`` that image i and text i belong together (fused, precise)."""
        image_BND, _ = self.encoder.encode_image(self.images_to_tensor(images).to(self.device))
        ids, mask = self._texts(texts)
        text_BLD, _ = self.encoder.encode_text(ids, mask)
        return F.softmax(self.encoder.match_logits(text_BLD, mask, image_BND).float(), dim=1)[:, 1]


def load_pretrained(path: str | Path, device: str | torch.device | None = None) -> PretrainedModel:
    """Loads an export (or a checkpoint, or a run's newest checkpoint) for inference.

    ``device`` defaults to CUDA when available. Nothing is downloaded.
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    source = resolve_weights(path)
    cfg = source_config(source)
    tokenizer = load_tokenizer(cfg.data.tokenizer)
    encoder = build_encoder(cfg, tokenizer)
    encoder.load_state_dict(load_encoder_state(source))
    return PretrainedModel(encoder, tokenizer, cfg, device)
