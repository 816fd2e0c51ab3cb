"""Batch-level mixup and cutmix, torchvision's own transforms (v2.MixUp, v2.CutMix, picked by v2.RandomChoice as
its classification reference does), applied on the device to the normalised batch.

Their random draws (the Beta sample, the box, the choice) come from the CPU generator; we seed it per
(seed, epoch, micro-batch, process), so a resumed run mixes exactly as an uninterrupted one and no draw touches
the generator that dropout uses.
"""

from __future__ import annotations

from typing import Optional

import torch
from torchvision.transforms import v2

from .data.pipeline import seeded


def mix_seed(seed: int, epoch: int, micro_step: int, rank: int) -> int:
    return (((seed * 1_000_003 + epoch) * 1_000_033 + micro_step) * 1_009 + rank + 0x5EED) & 0x7FFF_FFFF_FFFF_FFFF


class BatchMixer:
    """(images, int labels) -> (mixed images, soft labels summing to 1), or unchanged when both alphas are 0."""

    def __init__(self, num_classes: int, *, mixup_alpha: float, cutmix_alpha: float, seed: int, rank: int = 0):
        choices = []
        if mixup_alpha > 0:
            choices.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
        if cutmix_alpha > 0:
            choices.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
        self.mix: Optional[v2.RandomChoice] = v2.RandomChoice(choices) if choices else None
        self.seed, self.rank = seed, rank

    @property
    def active(self) -> bool:
        return self.mix is not None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, *, epoch: int, micro_step: int) -> tuple:
        if self.mix is None:
            return images, labels
        with seeded(mix_seed(self.seed, epoch, micro_step, self.rank)):
            return self.mix(images, labels)
