"""Decode every image of a dataset once, on all cores, and list the files that cannot be read.

    python -m vgg16.check_data --data /data/imagenet [--workers N]

Exit code 0 when every image decodes, 1 when some do not (each printed with its reason), 2 for bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from typing import Optional, Sequence

import datasets

from .data.images import BAD_IMAGE_ERRORS, decode_image
from .data.pipeline import describe
from .errors import UsageError, one_line
from .data.sources import load_source

_split: Optional[datasets.Dataset] = None


def _init(split: datasets.Dataset) -> None:
    global _split
    _split = split


def _check_range(bounds: tuple) -> list:
    """(where, reason) for each unreadable image in split[start:stop]."""
    bad = []
    for i in range(*bounds):
        raw = _split[i]["image"]
        try:
            decode_image(raw)
        except BAD_IMAGE_ERRORS as e:
            bad.append((describe(raw, i), f"{type(e).__name__}: {e}"))
    return bad


def check_split(split: datasets.Dataset, workers: int) -> list:
    split = split.cast_column("image", datasets.Image(decode=False))
    chunk = max(1, min(1000, len(split) // max(1, workers * 4)))
    ranges = [(start, min(start + chunk, len(split))) for start in range(0, len(split), chunk)]
    if workers <= 1:
        _init(split)
        return [b for r in ranges for b in _check_range(r)]
    with ProcessPoolExecutor(workers, initializer=_init, initargs=(split,)) as pool:
        return [b for found in pool.map(_check_range, ranges) for b in found]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.check_data", description=__doc__.splitlines()[0])
    parser.add_argument("--data", "--data_path", dest="data", help="as for train_vgg16.py (omit: embedded digits)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (default: all cores)")
    args = parser.parse_args(argv)
    try:
        source = load_source(args.data, seed=0)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    total = 0
    for name, split in (("train", source.train), ("validation", source.val)):
        bad = check_split(split, args.workers)
        total += len(bad)
        for where, reason in bad:
            print(f"{name}: {where}: {reason}")
        print(f"{name}: {len(split)} images, {len(bad)} unreadable", file=sys.stderr)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
