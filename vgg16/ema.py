"""--model-ema: an exponential moving average of the weights (and batch-norm statistics), as torchvision's
classification reference keeps it: same decay rescaling, same update every --model-ema-steps steps, weights
copied instead of averaged during warm-up."""

from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_avg_fn


def ema_decay(decay: float, *, world_size: int, batch_size: int, ema_steps: int, epochs: int) -> float:
    """torchvision's rescaling (train.py): `decay` is meant per update at world size x batch x ema_steps /
    epochs = 1, so the averaging horizon in epochs stays put when any of them changes."""
    adjust = world_size * batch_size * ema_steps / epochs
    alpha = min(1.0, (1.0 - decay) * adjust)
    return 1.0 - alpha


class ModelEMA(nn.Module):
    """torchvision's ExponentialMovingAverage (an AveragedModel over parameters and buffers). A module, so
    `accelerator.register_for_checkpointing` saves and restores it (the average and its update count)."""

    def __init__(self, model: nn.Module, *, decay: float, every: int, warmup_epochs: float):
        super().__init__()
        # get_ema_avg_fn is torchvision's ema_avg (decay x average + (1 - decay) x current); the per-tensor form,
        # not the foreach one, because the buffers include integer batch counters.
        self.averaged = AveragedModel(model, avg_fn=get_ema_avg_fn(decay), use_buffers=True)
        self.decay, self.every, self.warmup_epochs = decay, every, warmup_epochs

    @property
    def module(self) -> nn.Module:
        return self.averaged.module

    @torch.no_grad()
    def after_step(self, model: nn.Module, *, step_in_epoch: int, epoch: int) -> None:
        """Call after each optimizer step with the 0-based step within the epoch (torchvision's `i`)."""
        if step_in_epoch % self.every:
            return
        self.averaged.update_parameters(model)
        if epoch < self.warmup_epochs:
            self.averaged.n_averaged.fill_(0)  # the next update copies the weights again, as torchvision does
