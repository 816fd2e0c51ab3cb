"""Imbalanced training data: the class counts, a note when they differ widely, the loss weights of
`--class-weights`, and the class-balanced stream of `--sampler balanced`.

Why our own sampler: torch's `WeightedRandomSampler` draws with replacement independently per sample (a class's
count in an epoch varies by chance), is not distributed, and keeps no epoch to resume at; timm and torchvision have
none. `BalancedBatches` draws each epoch's stream from (seed, epoch) alone, as one global order of batches that
Accelerate shards by batch index, so N processes x batch b see what 1 process x batch N*b sees, and a mid-epoch
resume skips to the same batch (`accelerator.skip_first_batches`), as with the shuffled sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import yaml

from ..errors import UsageError

# A note at start when the largest class has more than this many times the images of the smallest.
IMBALANCE_NOTE_RATIO = 5


def class_counts(labels: Sequence[int], num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)


def imbalance_note(counts: np.ndarray, class_names: Sequence[str]) -> Optional[str]:
    """One line when the training classes are far from balanced, with the counts and the two options."""
    present = counts[counts > 0]
    if len(present) < 2 or present.max() <= IMBALANCE_NOTE_RATIO * present.min():
        return None
    big, small = int(np.argmax(counts)), int(np.where(counts > 0, counts, counts.max() + 1).argmin())
    return (f"imbalanced training data: class {class_names[big]} has {counts[big]} images, class "
            f"{class_names[small]} {counts[small]} ({counts[big] / counts[small]:.1f}x); a model trained on it may "
            "never predict the rare classes: --sampler balanced (a class-balanced stream) or --class-weights "
            "balanced (a weighted loss), and the per-class table in results.md shows each class's recall")


def balanced_weights(counts: np.ndarray) -> np.ndarray:
    """scikit-learn's `compute_class_weight("balanced")`: n_samples / (n_classes x count), over the classes present
    (a class without training images gets weight 0: it has no loss term anyway)."""
    from sklearn.utils.class_weight import compute_class_weight

    present = np.flatnonzero(counts)
    weights = np.zeros(len(counts), dtype=np.float64)
    weights[present] = compute_class_weight("balanced", classes=present, y=np.repeat(np.arange(len(counts)), counts))
    return weights


def read_class_weights(path: str, class_names: Sequence[str]) -> np.ndarray:
    """A YAML or JSON file of `class name: weight` (classes not listed weigh 1), or one weight per line in the
    classes' order."""
    where = f"--class-weights {path}"
    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as e:
        raise UsageError(f"{where}: cannot read it ({e.strerror or e})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"{where}: not valid YAML or JSON ({getattr(e, 'problem', None) or e})") from None
    names = [str(n) for n in class_names]
    if isinstance(data, dict):
        unknown = [str(k) for k in data if str(k) not in names]
        if unknown:
            raise UsageError(f"{where}: no class named {unknown[0]!r} in the data (its classes: "
                             f"{', '.join(names[:10])}{' ...' if len(names) > 10 else ''})")
        by_name = {str(k): v for k, v in data.items()}  # YAML reads a class named 3 as the number 3
        weights = np.array([by_name.get(n, 1.0) for n in names], dtype=object)
    elif isinstance(data, (list, str, int, float)):
        values = data if isinstance(data, list) else str(data).split()
        if len(values) != len(names):
            raise UsageError(f"{where}: {len(values)} weights for {len(names)} classes: give one per class, in the "
                             "classes' order, or a 'class: weight' mapping")
        weights = np.array(values, dtype=object)
    else:
        raise UsageError(f"{where}: give a 'class: weight' mapping or one weight per line")
    try:
        out = weights.astype(np.float64)
    except (TypeError, ValueError):
        raise UsageError(f"{where}: every weight must be a number") from None
    if (out < 0).any() or not np.isfinite(out).all() or out.sum() == 0:
        raise UsageError(f"{where}: weights must be finite, at least 0, and not all 0")
    return out


def loss_weights(spec: Optional[str], counts: np.ndarray, class_names: Sequence[str]) -> Optional[np.ndarray]:
    """The per-class loss weights --class-weights asks for (None: every class alike)."""
    if spec is None:
        return None
    return balanced_weights(counts) if spec == "balanced" else read_class_weights(spec, class_names)


def describe_weights(weights: np.ndarray, class_names: Sequence[str]) -> str:
    low, high = int(np.argmin(weights)), int(np.argmax(weights))
    return (f"class weights from {weights[low]:.3g} ({class_names[low]}) to {weights[high]:.3g} "
            f"({class_names[high]})")


class BalancedBatches(torch.utils.data.Sampler):
    """Each epoch, `draws` samples with every class drawn equally often (within one draw), as batches of the
    global order (see the module docstring).

    A class's images are taken in a seeded random order, again in a new order once all have been drawn, so an
    image repeats only after every image of its class has come; its d-th copy in the epoch is `index + d x
    len(dataset)`, which AugmentedDataset reads as the same image with its own augmentation seed. The epoch is
    cut to whole global batches."""

    def __init__(self, labels: Sequence[int], *, batch_size: int, num_processes: int, seed: int,
                 draws: Optional[int] = None):
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n = len(self.labels)
        self.batch_size, self.num_processes, self.seed = batch_size, num_processes, seed
        self.draws = draws or self.n
        self.members = [np.flatnonzero(self.labels == c) for c in range(int(self.labels.max()) + 1 if self.n else 0)]
        self.members = [m for m in self.members if len(m)]
        self.global_batches = self.draws // (batch_size * num_processes)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> list:
        """This epoch's whole stream, the same for any process count."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        classes = len(self.members)
        per_class = np.full(classes, self.draws // classes)
        per_class[torch.randperm(classes, generator=g)[: self.draws % classes].numpy()] += 1
        stream = []
        for members, wanted in zip(self.members, per_class):
            cycles = -(-int(wanted) // len(members))
            taken = [members[torch.randperm(len(members), generator=g).numpy()] for _ in range(cycles)]
            picked = np.concatenate(taken)[:wanted] if taken else np.zeros(0, np.int64)
            copy = np.arange(len(picked)) // len(members)  # the d-th time this class's images come round
            stream.append(picked + copy * self.n)
        whole = np.concatenate(stream) if stream else np.zeros(0, np.int64)
        whole = whole[torch.randperm(len(whole), generator=g).numpy()]
        return whole[: self.global_batches * self.batch_size * self.num_processes].tolist()

    def __iter__(self):
        stream = self.order()
        for b in range(0, len(stream), self.batch_size):
            yield stream[b:b + self.batch_size]

    def __len__(self) -> int:
        return self.global_batches * self.num_processes
