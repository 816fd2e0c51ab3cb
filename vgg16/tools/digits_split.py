"""A transfer-learning task made from the embedded digits: a source task (digits 0-4, every image) and a target
task (digits 5-9, a few training images per class, every validation image), as two ImageNet-layout folders.

    python -m vgg16.tools.digits_split OUT [--shots 8] [--seed 0]

writes OUT/digits-0-4/{train,val}/<digit>/*.png and OUT/digits-5-9/{train,val}/<digit>/*.png. Train a model on
the first, then fine-tune it on the second (README: Fine-tuning): the figures there come from these folders.
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.tools.digits_split", description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--shots", type=int, default=8, help="training images per class of the target task")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    source, target = make_digit_split(args.out, args.shots, args.seed)
    for folder in (source, target):
        counts = {s: sum(1 for _ in (folder / s).rglob("*.png")) for s in ("train", "val")}
        print(f"{folder}: {counts['train']} train / {counts['val']} val images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
