"""A resumed run trains on its config's optim.lr: what a PBT clone with a perturbed lr needs."""

from __future__ import annotations

import functools
from types import SimpleNamespace

import pytest
import torch

from mmpretrain.train.engine import adopt_config_lr
from mmpretrain.train.schedule import warmup_cosine

SCHEDULE = functools.partial(warmup_cosine, warmup_steps=4, max_steps=40, min_ratio=0.1)


def _engine(lr: float, steps: int, state: dict | None = None) -> SimpleNamespace:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULE)
    if state is not None:
        scheduler.load_state_dict(state)  # what DeepSpeed's load_checkpoint does
    for _ in range(steps):
        optimizer.step()
        scheduler.step()
    return SimpleNamespace(lr_scheduler=scheduler)


def test_a_clone_continues_the_schedule_from_the_perturbed_peak() -> None:
    leader = _engine(1e-3, steps=12)
    clone = _engine(5e-4, steps=0, state=leader.lr_scheduler.state_dict())
    assert clone.lr_scheduler.get_last_lr()[0] == pytest.approx(1e-3 * SCHEDULE(12))

    assert adopt_config_lr(clone, 1.2e-3)
    lr = clone.lr_scheduler.optimizer.param_groups[0]["lr"]
    assert lr == pytest.approx(1.2e-3 * SCHEDULE(12))  # same point of warmup-cosine
    clone.lr_scheduler.optimizer.step()
    clone.lr_scheduler.step()
    assert clone.lr_scheduler.get_last_lr()[0] == pytest.approx(1.2e-3 * SCHEDULE(13))


def test_an_ordinary_resume_keeps_its_schedule() -> None:
    run = _engine(1e-3, steps=7)
    before = run.lr_scheduler.get_last_lr()
    assert not adopt_config_lr(run, 1e-3)
    assert run.lr_scheduler.get_last_lr() == before
