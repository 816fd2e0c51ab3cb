"""SGD and the learning-rate schedule (warm-up, then step or cosine), stepped once per optimizer step."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn


def build_optimizer(model: nn.Module, *, lr: float, momentum: float, weight_decay: float,
                    nesterov: bool, fused: bool = False) -> torch.optim.SGD:
    """SGD over all parameters with weight decay on all of them, as torchvision's VGG recipe trains.

    fused: one kernel for the whole update (CUDA); otherwise torch picks the multi-tensor (foreach) path."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov,
                           fused=fused or None)


def lr_factor(*, kind: str, steps_per_epoch: int, total_steps: int, warmup_steps: int, step_size: int,
              gamma: float) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps.

    Warm-up rises linearly from 1% of the lr; 'step' multiplies by gamma every `step_size` epochs; 'cosine'
    decays to 0 over the steps after warm-up.
    """

    def factor(step: int) -> float:
        if step < warmup_steps:
            return 0.01 + 0.99 * step / warmup_steps
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return gamma ** ((step // steps_per_epoch) // step_size)

    return factor


def build_scheduler(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> torch.optim.lr_scheduler.LambdaLR:
    # Not passed to accelerator.prepare: its AcceleratedScheduler steps num_processes times per optimizer step
    # (for schedules written in single-process steps). Ours is written in optimizer steps and stepped by the engine
    # only when an optimizer step really happened. Its state (plain numbers) goes into trainer_state.json.
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def position_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the schedule at `step` without replaying it (for --start-epoch)."""
    scheduler.last_epoch = step
    values = [base * fn(step) for base, fn in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, value in zip(scheduler.optimizer.param_groups, values):
        group["lr"] = value
    scheduler._last_lr = values
