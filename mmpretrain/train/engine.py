"""DeepSpeed engine set-up from the run config: ZeRO stage, precision, AdamW, schedule.

DeepSpeed is initialised on the process group Ray Train already created (gloo on CPU, NCCL on
GPU). The optimizer and scheduler are plain torch objects handed to DeepSpeed, so the same code
runs on CPU, where DeepSpeed's fused CUDA optimizers do not exist.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from mmpretrain import distributed
from mmpretrain.config import RunConfig
from mmpretrain.train.schedule import warmup_cosine

NO_DECAY_SUFFIXES = ("bias", "norm.weight", "LayerNorm.weight", "log_scale")


def resolve_precision(cfg: RunConfig) -> str:
    if cfg.train.precision == "auto":
        return "bf16" if cfg.train.use_gpu else "fp32"
    return cfg.train.precision


def deepspeed_config(cfg: RunConfig, load_universal: bool = False) -> dict[str, Any]:
    """``load_universal``: the resume checkpoint was converted for another world size."""
    train = cfg.train
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": cfg.optim.grad_clip,
        "zero_optimization": {"stage": train.zero_stage},
        # bf16 as autocast: weights, gradients and optimizer state stay fp32, matmuls and
        # convolutions run in bf16 (what OpenCLIP's amp_bf16 does); works on CPU too.
        "torch_autocast": {"enabled": resolve_precision(cfg) == "bf16", "dtype": "bfloat16"},
        # torch's AdamW is supported by ZeRO but not on DeepSpeed's own allow-list.
        "zero_allow_untested_optimizer": True,
        "checkpoint": {"load_universal": load_universal},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on biases, norms and the temperature, as in BERT and CLIP."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        is_norm = param.ndim < 2 or name.endswith(NO_DECAY_SUFFIXES)
        (no_decay if is_norm else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    """AdamW over the decay / no-decay groups (what the engine and the GPU benchmark step).

    ``optim.fused`` false passes ``fused=None``, not False: an explicit False would also turn
    off torch's default multi-tensor (foreach) path on GPU.
    """
    optim = cfg.optim
    return torch.optim.AdamW(
        parameter_groups(model, optim.weight_decay),
        lr=optim.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
        fused=True if optim.fused else None,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: RunConfig) -> LambdaLR:
    """Linear warmup to ``optim.lr``, then cosine down to ``optim.min_lr_ratio`` of it."""
    optim = cfg.optim
    schedule = functools.partial(
        warmup_cosine,
        warmup_steps=optim.warmup_steps,
        max_steps=cfg.train.max_steps,
        min_ratio=optim.min_lr_ratio,
    )
    return LambdaLR(optimizer, schedule)


def build_engine(
    model: nn.Module, cfg: RunConfig, load_universal: bool = False
):  # -> deepspeed.DeepSpeedEngine
    """DeepSpeed engine around ``model``; with ``train.compile`` DeepSpeed's own compile path,
    which keeps ZeRO-3's parameter hooks working under ``torch.compile``."""
    import deepspeed

    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, load_universal),
    )
    if cfg.train.compile:
        engine.compile()
    return engine


def adopt_config_lr(engine: Any, lr: float) -> bool:
    """Makes the schedule peak at the config's ``optim.lr`` after a resume; True if it moved.

    The restored scheduler brings the saved run's base lr back. An ordinary resume has the
    same lr in its config, so nothing changes; a population-based-training trial that cloned
    another trial's checkpoint with a perturbed lr must train on the perturbed one, at the
    same point of the warmup-cosine schedule.
    """
    scheduler = engine.lr_scheduler
    if all(base == lr for base in scheduler.base_lrs):
        return False
    scheduler.base_lrs = [lr for _ in scheduler.base_lrs]
    factor = scheduler.lr_lambdas[0](scheduler.last_epoch)
    for group in scheduler.optimizer.param_groups:  # the torch AdamW that ZeRO wraps
        group["initial_lr"] = lr
        group["lr"] = lr * factor
    return True


@torch.no_grad()
def update_momentum_encoder(task: nn.Module, momentum: float) -> None:
    """EMA of the online encoder into the momentum encoder (ALBEF), after each optimizer step.

    Under ZeRO-3 a parameter's values live in ``ds_tensor`` (this rank's slice) and
    ``param.data`` is an empty placeholder; both encoders have identical shapes, so their slices
    line up and each rank updates its own slice without any communication.
    """
    for momentum_param, param in task.momentum_pairs():
        target = getattr(momentum_param, "ds_tensor", momentum_param.data)
        source = getattr(param, "ds_tensor", param.data)
        target.mul_(momentum).add_(source.to(target.dtype), alpha=1.0 - momentum)


@torch.no_grad()
def average_buffers(module: nn.Module) -> None:
    """Averages floating-point buffers (BatchNorm running statistics) over the ranks.

    Each rank's BatchNorm layers track statistics of its own data; without this the checkpoint
    would hold rank 0's alone and a data-parallel evaluation would embed each rank's stripe with
    different statistics. Called before every checkpoint and evaluation (as timm's
    ``distribute_bn``); parameters need no such step, the optimizer keeps them identical.
    """
    if not distributed.is_distributed():
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            distributed.mean_across_ranks(buffer)
