"""Where a batch is decoded and how it reaches the device: one shape for the CPU path and for --gpu-decode.

The map-style inputs (vgg16/data/inputs.py) ask `decoding_for(gpu_decode, device)` for a `Decoding` and uses it the same way either way:
`decoding.feed(split)` gives the dataset the DataLoader indexes and the function that turns one loader batch into
(uint8 NCHW images, labels, bad flags) on the device; `collate_fn` and `loader_on_device` go to the DataLoader and
to `accelerator.prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch.utils.data import Dataset

from .pipeline import AugmentedDataset, collate_samples
from .gpu_decode import BatchDecoder, EncodedImages, collate_encoded


@dataclass(frozen=True)
class Feed:
    """One split's way from its files to device batches."""

    dataset: Dataset
    """What the DataLoader indexes."""
    prepare: Callable[[tuple], tuple]
    """Loader batch -> (uint8 NCHW images, labels, bad) on the device."""


@dataclass(frozen=True)
class Decoding:
    name: str
    loader_dataset: Callable[[Dataset], Dataset]
    batch_fn: Callable[[Dataset], Callable[[tuple], tuple]]
    collate_fn: Optional[Callable] = None
    loader_on_device: bool = True
    """Whether Accelerate moves the loader's batches to the device (False: `prepare` does, after decoding)."""

    def feed(self, split: Dataset) -> Feed:
        return Feed(self.loader_dataset(split), self.batch_fn(split))


def _unchanged(split: Dataset) -> Dataset:
    return split


def _as_is(split: Dataset) -> Callable[[tuple], tuple]:
    return tuple  # the loader's (images, labels, bad), already on the device through Accelerate


# Loader workers decode and augment; Accelerate's prepared loader moves uint8 batches to the device.
HOST = Decoding("cpu workers", _unchanged, _as_is, collate_fn=collate_samples)


def device_decoding(device: torch.device | str) -> Decoding:
    """Workers only read file bytes; nvJPEG decodes each batch on `device`, where the same seeded transforms run.
    nvJPEG reads its input from host memory, so the loader leaves batches on the CPU."""

    def batch_fn(split: AugmentedDataset) -> Callable[[tuple], tuple]:
        return BatchDecoder(split, device)

    return Decoding("gpu decode (nvJPEG)", EncodedImages, batch_fn, collate_fn=collate_encoded, loader_on_device=False)


def decoding_for(gpu_decode: bool, device: torch.device | str) -> Decoding:
    return device_decoding(device) if gpu_decode else HOST
