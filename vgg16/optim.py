"""Optimizers, weight-decay parameter groups and the learning-rate schedule, as torchvision's classification
reference defines them (references/classification/train.py and utils.set_weight_decay)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import nn

from .errors import UsageError

if TYPE_CHECKING:
    from .config import TrainConfig

# torchvision's set_weight_decay treats these as normalisation layers.
NORM_CLASSES = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
                nn.LocalResponseNorm)


def parameter_groups(model: nn.Module, weight_decay: float, norm_weight_decay: Optional[float] = None,
                     bias_weight_decay: Optional[float] = None, backbone_lr: Optional[float] = None) -> list:
    """torchvision's set_weight_decay with custom key "bias": every bias (norm layers' included) takes
    bias_weight_decay when it is given; the remaining parameters of norm layers take norm_weight_decay when it is
    given; everything else weight_decay. Empty groups are left out.

    backbone_lr (--backbone-lr-scale, discriminative lr): the same groups again for `model.features`, at this lr,
    after the classifier's (so param_groups[0], which the progress line shows, is the classifier's)."""
    backbone = {id(p) for p in model.features.parameters()} if backbone_lr is not None else set()
    groups: dict = {(part, kind): [] for part in ("head", "backbone") for kind in ("other", "norm", "bias")}
    decay = {"other": weight_decay, "norm": norm_weight_decay, "bias": bias_weight_decay}
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            part = "backbone" if id(p) in backbone else "head"
            if bias_weight_decay is not None and name == "bias":
                groups[(part, "bias")].append(p)
            elif norm_weight_decay is not None and isinstance(module, NORM_CLASSES):
                groups[(part, "norm")].append(p)
            else:
                groups[(part, "other")].append(p)
    return [{"params": params, "weight_decay": decay[kind], **({"lr": backbone_lr} if part == "backbone" else {})}
            for (part, kind), params in groups.items() if params]


def use_fused(device_type: str, mixed_precision: str) -> bool:
    """Fused SGD/AdamW on CUDA, except in fp16. A fused optimizer takes GradScaler's inf check into its kernel, so
    GradScaler calls its step() even for an overflowing batch; Accelerate (1.15) detects a skipped step by that call
    not happening, and would count no skipped step and advance the lr schedule on every one. Seen on an H100 with
    the device check's fp16 item (--loss-scale 2^40: 29 halvings of the scale, 0 skipped steps reported)."""
    return device_type == "cuda" and mixed_precision != "fp16"


def build_optimizer(model: nn.Module, *, opt: str = "sgd", lr: float, momentum: float, weight_decay: float,
                    norm_weight_decay: Optional[float] = None, bias_weight_decay: Optional[float] = None,
                    fused: bool = False, backbone_lr_scale: float = 1.0) -> torch.optim.Optimizer:
    """torchvision's --opt choices with its settings (RMSprop eps 0.0316 and alpha 0.9, as it trains).

    fused: one kernel for the whole update on CUDA (SGD, AdamW); otherwise torch picks the multi-tensor path.
    backbone_lr_scale: the features train at lr x this (the schedule scales both alike)."""
    groups = parameter_groups(model, weight_decay, norm_weight_decay, bias_weight_decay,
                              backbone_lr=lr * backbone_lr_scale if backbone_lr_scale != 1.0 else None)
    if opt in ("sgd", "sgd_nesterov"):
        # Nesterov with momentum 0 is refused by the config's rules (config.check_rules), before any model is built.
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=opt == "sgd_nesterov",
                               fused=fused or None)
    if opt == "adamw":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if opt == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, eps=0.0316, alpha=0.9)
    raise UsageError(f"unknown --opt {opt!r}")


def lr_factor(*, kind: str, steps_per_epoch: int, total_steps: int, warmup_steps: int, step_size: int = 30,
              gamma: float = 0.1, warmup_method: str = "linear", warmup_decay: float = 0.01, min_factor: float = 0.0,
              per_epoch: bool = False) -> Callable[[int], float]:
    """Multiplier of the base lr after `step` optimizer steps.

    Warm-up: linear from `warmup_decay` to 1, or constant at `warmup_decay` (torchvision's LinearLR/ConstantLR).
    Then 'step' multiplies by gamma every `step_size` epochs; 'cosine' decays to `min_factor` (lr_min / lr) over
    the steps after warm-up. per_epoch: the schedule moves only at epoch boundaries, as torchvision and the old
    scripts step it (with warm-up in whole epochs).
    """

    def factor(step: int) -> float:
        if per_epoch:
            step = (step // steps_per_epoch) * steps_per_epoch
        if step < warmup_steps:
            if warmup_method == "constant":
                return warmup_decay
            return warmup_decay + (1.0 - warmup_decay) * step / warmup_steps
        if kind == "cosine":
            progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
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


def run_scheduler(cfg: "TrainConfig", optimizer: torch.optim.Optimizer,
                  steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The run's schedule from its options: warm-up (whole epochs with --lr-update epoch), then step or cosine to
    --lr-min, over --epochs of `steps_per_epoch` optimizer steps."""
    per_epoch = cfg.lr_update == "epoch"
    warmup = cfg.warmup_epochs if not per_epoch else math.ceil(cfg.warmup_epochs)
    factor = lr_factor(kind=cfg.lr_scheduler, steps_per_epoch=steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
                       warmup_steps=round(warmup * steps_per_epoch), step_size=cfg.lr_step_size, gamma=cfg.lr_gamma,
                       warmup_method=cfg.lr_warmup_method, warmup_decay=cfg.lr_warmup_decay,
                       min_factor=cfg.lr_min / optimizer.defaults["lr"] if optimizer.defaults["lr"] else 0.0,
                       per_epoch=per_epoch)
    return build_scheduler(optimizer, factor)
