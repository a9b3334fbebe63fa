"""What several benchmarks share: the pretraining task built as training builds it, with random
weights, a BERT-sized tokenizer and a random batch; one training step; the CLI's environment.

Not a benchmark itself (the leading underscore); the scripts beside it import it, which works
because Python puts a script's own folder first on ``sys.path``.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mmpretrain.config import RunConfig
from mmpretrain.data.synth import caption_for, sample_scene
from mmpretrain.data.tokenizer import CaptionTokenizer, load_tokenizer, train_tokenizer_on
from mmpretrain.model import PretrainingTask
from mmpretrain.train.builder import build_training_task

VOCAB = 30522  # BERT-base's vocabulary, so embeddings and MLM heads cost what they would
CAPTIONS = 2000  # synthetic captions the WordPiece vocabulary is learnt from


def bert_sized_tokenizer(folder: str | Path, vocab_size: int = VOCAB) -> CaptionTokenizer:
    """A WordPiece tokenizer learnt on the synthetic captions, padded to ``vocab_size``.

    The synthetic captions hold a few hundred distinct word pieces; the rest of the vocabulary
    is ``[unusedN]`` entries (as BERT's own vocabulary has), which no caption produces but the
    embedding table and the MLM decoders are sized by. Saved as ``vocab.txt``, the layout of a
    saved ``bert-base-uncased`` folder, so ``data.tokenizer`` can point a real run at it.
    """
    rng = random.Random(0)
    captions = (caption_for(sample_scene(rng), rng) for _ in range(CAPTIONS))
    out = train_tokenizer_on(captions, folder, vocab_size)
    vocab = (out / "vocab.txt").read_text().splitlines()
    filler = [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    (out / "vocab.txt").write_text("\n".join([*vocab, *filler]) + "\n")
    (out / "tokenizer.json").unlink()  # load_tokenizer rebuilds the WordPiece from vocab.txt
    tokenizer = load_tokenizer(str(out))
    assert tokenizer.vocab_size == vocab_size, tokenizer.vocab_size
    return tokenizer


def temporary_tokenizer(vocab_size: int = VOCAB) -> CaptionTokenizer:
    """``bert_sized_tokenizer`` for in-process use: the tokenizer lives on, its folder not."""
    with tempfile.TemporaryDirectory(prefix="mmpretrain-bench-tok-") as folder:
        return bert_sized_tokenizer(folder, vocab_size)


def build_task(cfg: RunConfig, tokenizer: CaptionTokenizer, device: str) -> PretrainingTask:
    """The training task with the run's speed switches, random weights (seed 0)."""
    torch.manual_seed(0)
    return build_training_task(cfg, tokenizer).to(device)


def random_pairs(
    cfg: RunConfig, tokenizer: CaptionTokenizer, batch: int, device: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images and full-length captions of random word pieces: ``(images, ids, mask)``.

    Every caption fills ``data.max_text_len`` (no padding): the most a step can cost.
    """
    size, length = cfg.data.image_size, cfg.data.max_text_len
    generator = torch.Generator().manual_seed(batch)
    images = torch.randint(0, 256, (batch, size, size, 3), dtype=torch.uint8, generator=generator)
    ids = torch.randint(5, tokenizer.vocab_size, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    return images.to(device), ids.to(device), torch.ones_like(ids).to(device)


def training_step(
    module: nn.Module,
    loss_of: Callable[[], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    device: str,
    bf16: bool,
) -> Callable[[], None]:
    """One step as training takes it: loss under (bf16) autocast, backward, optimizer step."""

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_of()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def seconds_per_step(step: Callable[[], None], device: str, warmup: int, iters: int) -> float:
    """Steady-state time of one step: ``warmup`` untimed steps (allocator, kernels, optimizer
    state, compilation), then the mean of ``iters`` timed ones."""
    for _ in range(warmup):
        step()
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / iters


def cli_env() -> dict[str, str]:
    """The environment for ``python -m mmpretrain ...`` as a benchmark's subprocess: an
    embedded Ray of its own (never one named by RAY_ADDRESS), without token auth."""
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
    env.pop("RAY_ADDRESS", None)
    return env
