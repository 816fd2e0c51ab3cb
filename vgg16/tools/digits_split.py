"""Tasks made from the embedded digits, as ImageNet-layout folders.

    python -m vgg16.tools.digits_split OUT [--shots 8] [--seed 0]
    python -m vgg16.tools.digits_split OUT --long-tail [--rarest 6] [--seed 0]

The first writes a transfer-learning task: OUT/digits-0-4/{train,val}/<digit>/*.png (every image) and
OUT/digits-5-9/{train,val}/<digit>/*.png (a few training images per class, every validation image). Train a model
on the first, then fine-tune it on the second (README: Fine-tuning): the figures there come from these folders.
The second writes OUT/digits-long-tail: digit 0 keeps all its training images, each next digit geometrically
fewer, digit 9 `--rarest`; every validation image (docs/imbalance.md's figures come from it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..data.sources import load_digits

SOURCE, TARGET = range(0, 5), range(5, 10)


def _write(split, indices, folder: Path) -> int:
    names = split.features["label"].names
    for i in indices:
        row = split[int(i)]
        dest = folder / names[row["label"]]
        dest.mkdir(parents=True, exist_ok=True)
        row["image"].save(dest / f"{int(i):04d}.png")
    return len(indices)


def make_digit_split(out: Path, shots: int = 8, seed: int = 0) -> tuple[Path, Path]:
    """(source folder, target folder); the target's `shots` training images per class are a seeded choice."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    train_labels, val_labels = np.array(data.train["label"]), np.array(data.val["label"])
    source, target = Path(out) / "digits-0-4", Path(out) / "digits-5-9"
    for digit in SOURCE:
        _write(data.train, np.flatnonzero(train_labels == digit), source / "train")
        _write(data.val, np.flatnonzero(val_labels == digit), source / "val")
    for digit in TARGET:
        chosen = rng.choice(np.flatnonzero(train_labels == digit), size=shots, replace=False)
        _write(data.train, np.sort(chosen), target / "train")
        _write(data.val, np.flatnonzero(val_labels == digit), target / "val")
    return source, target


def long_tail_counts(largest: int, rarest: int, classes: int = 10) -> list:
    """Training images kept per class: `largest` down to `rarest`, geometrically."""
    return [int(round(largest * (rarest / largest) ** (c / (classes - 1)))) for c in range(classes)]


def make_long_tail(out: Path, rarest: int = 6, seed: int = 0) -> Path:
    """OUT/digits-long-tail: a seeded choice of each digit's training images (long_tail_counts), every
    validation image."""
    data = load_digits()
    rng = np.random.default_rng(seed)
    train_labels, val_labels = np.array(data.train["label"]), np.array(data.val["label"])
    folder = Path(out) / "digits-long-tail"
    counts = long_tail_counts(int((train_labels == 0).sum()), rarest)
    for digit, keep in enumerate(counts):
        chosen = rng.choice(np.flatnonzero(train_labels == digit), size=keep, replace=False)
        _write(data.train, np.sort(chosen), folder / "train")
        _write(data.val, np.flatnonzero(val_labels == digit), folder / "val")
    return folder


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.tools.digits_split", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shots", type=int, default=8, help="training images per class of the target task")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long-tail", action="store_true", help="the long-tailed split instead")
    parser.add_argument("--rarest", type=int, default=6, help="--long-tail: training images of digit 9")
    args = parser.parse_args(argv)
    folders = [make_long_tail(args.out, args.rarest, args.seed)] if args.long_tail else \
        make_digit_split(args.out, args.shots, args.seed)
    for folder in folders:
        counts = {s: sum(1 for _ in (folder / s).rglob("*.png")) for s in ("train", "val")}
        print(f"{folder}: {counts['train']} train / {counts['val']} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
