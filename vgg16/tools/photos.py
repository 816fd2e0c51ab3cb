"""A folder of real photographs in the ImageNet layout, made on the spot: random crops of the colour and grey
photographs scikit-image ships (read as plain files, without importing skimage), one class per photograph, saved
as JPEG. The device check times decoding on them (ImageNet's JPEGs are about 500x375) and the tests train on them.

    python -m vgg16.tools.photos OUT [--train 64 --val 16 --size 500x375] [--parquet SHARDS]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..errors import UsageError

# Photographs (not drawings or test charts) in skimage/data, the first four in colour.
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "hubble_deep_field.jpg", "motorcycle_left.png",
          "camera.png", "moon.png", "coins.png", "grass.png")


def photo_dir() -> Path:
    spec = importlib.util.find_spec("skimage")
    if spec is None:
        raise UsageError("scikit-image is not installed: pip install scikit-image (its sample photographs are used)")
    return Path(spec.submodule_search_locations[0]) / "data"


def _one_photo(args: tuple) -> int:
    """Write every crop of one photograph; one generator per photograph, so the result does not depend on how the
    photographs are spread over processes."""
    root, name, counts, size, scale, seed, index, quality = args
    rng = np.random.default_rng([seed, index])
    photo = Image.open(photo_dir() / name).convert("RGB")
    w, h = photo.size
    written = 0
    for split, n in counts:
        folder = Path(root) / split / Path(name).stem
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            side = int(min(w, h) * rng.uniform(*scale))
            crop_h = min(h, int(side * size[1] / size[0]))
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - crop_h + 1))
            crop = photo.crop((x, y, x + side, y + crop_h))
            crop.resize(size, Image.BILINEAR).save(folder / f"{i:05d}.jpg", quality=quality)
            written += 1
    return written


def make_photo_folder(root: Path, n_train: int = 8, n_val: int = 3, size: tuple = (64, 48), seed: int = 0,
                      photos: Sequence[str] = PHOTOS[:4], processes: int = 1, quality: int = 90,
                      scale: tuple = (0.35, 0.7)) -> Path:
    """root/{train,val}/<photo>/<i>.jpg: n_train and n_val crops of each photograph, resized to `size` (w, h);
    a crop's side is `scale` (a range) of the photograph's shorter side."""
    root = Path(root)
    available = [name for name in photos if (photo_dir() / name).exists()]  # scikit-image may drop one some day
    if not available:
        raise UsageError(f"none of {', '.join(photos)} is in {photo_dir()}")
    photos = available
    tasks = [(str(root), name, (("train", n_train), ("val", n_val)), tuple(size), tuple(scale), seed, k,
              quality)
             for k, name in enumerate(photos)]
    if processes > 1:
        with ProcessPoolExecutor(min(processes, len(tasks))) as pool:
            list(pool.map(_one_photo, tasks))
    else:
        for task in tasks:
            _one_photo(task)
    return root


def folder_to_parquet(folder: Path, output: Path, shards: int, seed: int = 0) -> Path:
    """The hub's parquet layout (output/data/{train,validation}-NNNNN-of-MMMMM.parquet) of an ImageNet-style folder:
    rows shuffled (seeded) as hub shards are, the JPEG bytes inside, written by `datasets` (its row groups: up to
    100 MB in datasets 5.2; ClassLabel names in the schema), for timing --streaming against loading the same files
    whole."""
    import datasets

    from ..data.folders import scan_class_folder

    for split, out_name, n_shards in (("train", "train", shards), ("val", "validation", max(1, shards // 8))):
        scan = scan_class_folder(Path(folder) / split)
        paths, labels, classes = scan.images, scan.labels, scan.classes
        order = np.random.default_rng(seed).permutation(len(paths))
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
        for k, part in enumerate(np.array_split(order, n_shards)):
            rows = {"image": [paths[i] if isinstance(paths[i], dict) else {"bytes": Path(paths[i]).read_bytes(), "path": None}
                               for i in part],
                    "label": [labels[i] for i in part]}
            target = Path(output) / "data" / f"{out_name}-{k:05d}-of-{n_shards:05d}.parquet"
            target.parent.mkdir(parents=True, exist_ok=True)
            datasets.Dataset.from_dict(rows, features=features).to_parquet(str(target))
    return Path(output)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.tools.photos", description=__doc__.splitlines()[0])
    parser.add_argument("output")
    parser.add_argument("--train", type=int, default=64, help="crops per class for train")
    parser.add_argument("--val", type=int, default=16, help="crops per class for val")
    parser.add_argument("--classes", type=int, default=len(PHOTOS), help=f"at most {len(PHOTOS)}")
    parser.add_argument("--size", default="500x375", help="WxH")
    parser.add_argument("--parquet", type=int, metavar="SHARDS",
                        help="also write OUTPUT-parquet/ in the hub's layout with this many train shards")
    args = parser.parse_args(argv)
    w, h = (int(v) for v in args.size.lower().split("x"))
    make_photo_folder(Path(args.output), args.train, args.val, (w, h), photos=PHOTOS[:args.classes],
                      processes=os.cpu_count() or 1, scale=(0.6, 1.0))
    print(f"{args.output}: {args.classes} classes, {args.train} train and {args.val} val JPEGs each, {w}x{h}")
    if args.parquet:
        out = folder_to_parquet(Path(args.output), Path(f"{args.output.rstrip('/')}-parquet"), args.parquet)
        print(f"{out}: the same images as parquet shards, {args.parquet} for train")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
