"""Where images come from: every source becomes train and validation `datasets.Dataset`s with an `image`
(datasets.Image) and a `label` (datasets.ClassLabel) column, sharing one class list.

Sources: an ImageNet-style folder, CIFAR-10 (python pickles or the hub's parquet files), a `save_to_disk` folder,
a hub dataset name, and the embedded digits. The synthetic source lives in `vgg16.data.pipeline` (it has no files).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Iterable, Optional

import datasets
import numpy as np
import pyarrow.parquet as pq

from ..errors import UsageError
from .imagenet_val import flat_images, flat_val_split
from .folders import IMG_EXTENSIONS, scan_class_folder

ASSETS = Path(__file__).parents[1] / "assets"
VAL_SPLIT_NAMES = ("validation", "val", "valid", "test")


@dataclass
class ImageData:
    """Train/validation splits and what was learned about them while loading."""

    name: str
    train: Any
    """A `datasets.Dataset`; a `ParquetSplit` with --streaming (data/inputs.py); None for --dataset synthetic."""
    val: Any
    class_names: list
    small_images: bool
    """True when the source's images are below 64 px (CIFAR, digits): the default size becomes 32."""
    notes: tuple = ()


def _features(class_names: list) -> datasets.Features:
    return datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=class_names)})


def first_image_is_small(raw_images: Iterable[dict]) -> bool:
    """Whether images are CIFAR-sized, judged by the first of up to 16 undecoded datasets.Image values
    ({'bytes', 'path'}) that decodes (a bad file must not stop a run)."""
    for raw in islice(raw_images, 16):
        try:
            return max(datasets.Image().decode_example(raw).size) < 64
        except (OSError, ValueError, SyntaxError):
            continue
    return False


def _first_image_is_small(ds: datasets.Dataset) -> bool:
    undecoded = ds.cast_column("image", datasets.Image(decode=False))
    return first_image_is_small(undecoded[i]["image"] for i in range(len(ds)))


# ---------------------------------------------------------------- ImageNet-style folders
def _check_same_classes(train_classes: list, val_classes: list, where: str) -> None:
    if train_classes == val_classes:
        return
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    parts = []
    if only_train:
        parts.append(f"only in train: {', '.join(map(str, only_train[:5]))}")
    if only_val:
        parts.append(f"only in validation: {', '.join(map(str, only_val[:5]))}")
    if not parts:
        parts.append("same names in a different order")
    raise UsageError(f"train and validation classes differ in {where} ({'; '.join(parts)}): both splits need "
                     "the same class list")


def is_class_folder(root: Path) -> bool:
    """torchvision ImageFolder's own layout, root/<class>/<image>, with no train/ inside (its split names alone,
    such as a lone val/, do not count). Looks only until it finds one image."""
    subdirs = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    if not subdirs or {e.name for e in subdirs} <= {"train", *VAL_SPLIT_NAMES}:
        return False
    for entry in subdirs:
        for _, _, files in os.walk(entry.path, followlinks=True):
            if any(f.lower().endswith(IMG_EXTENSIONS) for f in files):
                return True
    return False


def load_image_folder(root: Path, seed: int = 0) -> ImageData:
    """train/<class>/* with val/<class>/* (ImageNet's layout); or, without a val/ folder, or for a bare folder of
    class folders (ImageFolder's layout), a seeded stratified 10% of the images held out for validation."""
    val_dir = next((root / n for n in ("val", "validation") if (root / n).is_dir()), None)
    train_root = root / "train" if (root / "train").is_dir() else root
    train_scan = scan_class_folder(train_root)
    classes = train_scan.classes
    if not classes:
        raise UsageError(f"{train_root} has no class folders: put each class's images in {train_root}/<class>/")
    features = _features(classes)
    train = datasets.Dataset.from_dict({"image": train_scan.images, "label": train_scan.labels}, features=features)
    if train_root == root or val_dir is None:
        data = _from_splits(root.name, {"train": train}, str(root), seed)
        return dataclasses.replace(data, notes=(*train_scan.notes, *data.notes))
    flat = flat_images(val_dir)
    if flat:  # ImageNet's validation as shipped: one folder, the labels in the devkit or Kaggle's CSV
        images, labels, note = flat_val_split(root, val_dir, flat, classes)
        val_notes: tuple = (note,)
    else:
        val_scan = scan_class_folder(val_dir)
        _check_same_classes(classes, val_scan.classes, str(root))
        images, labels, val_notes = val_scan.images, val_scan.labels, val_scan.notes
    val = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
    return ImageData(root.name, train, val, classes, small_images=_first_image_is_small(train),
                     notes=(*train_scan.notes, *val_notes))


# ---------------------------------------------------------------- CIFAR-10, python pickles
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR-10 python files are pickles; allow only what they contain (numpy arrays), never code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UsageError(f"refusing to unpickle {module}.{name}: not a CIFAR-10 batch file")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise UsageError(f"{path} is not a readable CIFAR-10 batch file ({e})") from None


def _ppm(image_hwc: np.ndarray) -> bytes:
    # Raw PPM: encoding 60,000 images costs well under a second (PNG took about 11 s), and PIL decodes it.
    h, w, _ = image_hwc.shape
    return b"P6\n%d %d\n255\n" % (w, h) + image_hwc.tobytes()


def load_cifar10_batches(folder: Path) -> ImageData:
    meta = _unpickle(folder / "batches.meta")
    classes = [n.decode() for n in meta[b"label_names"]]
    features = _features(classes)

    def split(files: list) -> datasets.Dataset:
        images, labels = [], []
        for name in files:
            batch = _unpickle(folder / name)
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            images.extend({"bytes": _ppm(img), "path": None} for img in data)
            labels.extend(int(x) for x in batch[b"labels"])
        return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)

    train_files = sorted(p.name for p in folder.glob("data_batch_*"))
    if not train_files or not (folder / "test_batch").exists():
        raise UsageError(f"{folder} lacks data_batch_* or test_batch: is it an unpacked cifar-10-python.tar.gz?")
    return ImageData("cifar10", split(train_files), split(["test_batch"]), classes, small_images=True)


# ---------------------------------------------------------------- datasets-library layouts
def image_and_label_columns(features: datasets.Features, column_names: list, where: str) -> tuple[str, str]:
    """The image column (a datasets.Image, or one named image/img: CIFAR-10's parquet uses `img`) and the label
    column (a ClassLabel, or label/labels/fine_label)."""
    image_col = next((c for c, f in features.items() if isinstance(f, datasets.Image)), None)
    image_col = image_col or next((c for c in ("image", "img") if c in column_names), None)
    label_col = next((c for c, f in features.items() if isinstance(f, datasets.ClassLabel)), None)
    label_col = label_col or next((c for c in ("label", "labels", "fine_label") if c in column_names), None)
    if image_col is None or label_col is None:
        raise UsageError(f"{where} needs an image column and a label column; it has {', '.join(column_names)}")
    return image_col, label_col


def _standardise(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    """Rename the image and label columns to `image`/`label` and drop the rest."""
    image_col, label_col = image_and_label_columns(ds.features, ds.column_names, where)
    ds = ds.select_columns([image_col, label_col])
    ds = ds.rename_columns({k: v for k, v in ((image_col, "image"), (label_col, "label")) if k != v})
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    if not isinstance(ds.features["label"], datasets.ClassLabel):
        ds = ds.class_encode_column("label")
    return ds


def _from_splits(name: str, splits: dict, where: str, seed: int) -> ImageData:
    if "train" not in splits:
        raise UsageError(f"{where} has no 'train' split (it has {', '.join(splits) or 'none'})")
    train = _standardise(splits["train"], where)
    notes = ()
    val_name = next((n for n in VAL_SPLIT_NAMES if n in splits), None)
    if val_name is None:
        try:
            held = train.train_test_split(test_size=0.1, seed=seed, stratify_by_column="label")
        except ValueError as e:  # fewer held-out images than classes, or a class with one image
            raise UsageError(f"{where} has no validation split and too few images to hold one out per class "
                             f"({str(e).splitlines()[0]}): add a val/ folder") from None
        train, val = held["train"], held["test"]
        notes = (f"{where} has no validation split: holding out 10% of train ({len(val)} images, seed {seed})",)
    else:
        val = _standardise(splits[val_name], where)
    classes = train.features["label"].names
    _check_same_classes(classes, val.features["label"].names, where)
    return ImageData(name, train, val, classes, small_images=_first_image_is_small(train), notes=notes)


def load_parquet_folder(folder: Path, seed: int) -> ImageData:
    """The hub's parquet layout (e.g. CIFAR-10 as `plain_text/train-00000-of-00001.parquet`, `test-...`)."""
    files = sorted(folder.rglob("*.parquet"))
    by_split: dict = {}
    for f in files:
        split = f.stem.split("-")[0]
        by_split.setdefault(split, []).append(str(f))
    splits = {s: datasets.Dataset.from_parquet(paths) for s, paths in by_split.items()}
    return _from_splits(folder.name, splits, str(folder), seed)


def load_saved(folder: Path, seed: int) -> ImageData:
    loaded = datasets.load_from_disk(str(folder))
    splits = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    return _from_splits(folder.name, splits, str(folder), seed)


def load_hub(name: str, seed: int) -> ImageData:
    try:
        loaded = datasets.load_dataset(name)
    except Exception as e:  # offline, unknown name, gated repo: all end the same way for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--data {name!r} is not a local path and could not be loaded from the hub or its cache "
                         f"({first})") from None
    return _from_splits(name.split("/")[-1], dict(loaded), name, seed)


def load_digits() -> ImageData:
    """The embedded dataset: 1,797 real 8x8 handwritten digits (see vgg16/assets/README.md)."""
    train = datasets.Dataset(pq.read_table(ASSETS / "digits-train.parquet"))
    val = datasets.Dataset(pq.read_table(ASSETS / "digits-validation.parquet"))
    return ImageData("digits", train, val, train.features["label"].names, small_images=True)


def check_hub_name(data: str) -> None:
    """A --data that is not a local path must look like a hub name (user/name or name), not a mistyped path."""
    if data.startswith((".", "/", "~")) or os.sep in data.strip("/").replace("/", "", 1):
        raise UsageError(f"--data {data}: no such file or directory")


def load_source(data: Optional[str], seed: int) -> ImageData:
    """Pick the loader from what `data` is. None means the embedded digits."""
    if data is None:
        return load_digits()
    path = Path(data).expanduser()
    if not path.exists():
        check_hub_name(data)
        return load_hub(data, seed)
    if not path.is_dir():
        raise UsageError(f"--data {data} is a file: give the dataset's folder")
    if not any(path.iterdir()):
        raise UsageError(f"--data {data} is an empty folder")
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return load_saved(path, seed)
    cifar = path if (path / "batches.meta").exists() else path / "cifar-10-batches-py"
    if (cifar / "batches.meta").exists():
        return load_cifar10_batches(cifar)
    if (path / "train").is_dir() or is_class_folder(path):
        return load_image_folder(path, seed)
    if any(path.rglob("*.parquet")):
        return load_parquet_folder(path, seed)
    raise UsageError(f"--data {data}: no train/ folder, cifar-10-batches-py, parquet files or saved dataset found "
                     "there (image folders: train/<class>/* and val/<class>/*, or <class>/* alone)")
