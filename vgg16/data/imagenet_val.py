"""ImageNet's validation split as it is shipped: 50,000 images in one folder, the labels elsewhere.

image-net.org ships `ILSVRC2012_img_val.tar` (a flat folder) and the labels in the devkit
(`ILSVRC2012_devkit_t12.tar.gz`: `data/ILSVRC2012_validation_ground_truth.txt`, one ILSVRC2012_ID a line in file
name order, and `data/meta.mat`, ID -> WordNet ID); Kaggle's copy has a flat `val/` and `LOC_val_solution.csv`
(`ImageId,PredictionString`, the class the first token). The labels are read from whichever is there, and no file
is moved. Why not torchvision's `parse_devkit_archive`: it checks the archive's MD5 against the official one and
writes `meta.bin` into the data folder, which may be read-only; its `parse_val_archive` moves the images. Its
`meta.bin`, where an earlier torchvision run left one, is read (`load_meta_file`).
"""

from __future__ import annotations

import csv
import io
import os
import tarfile
from pathlib import Path
from typing import Optional

from ..errors import UsageError
from .folders import IMG_EXTENSIONS

DEVKIT = "ILSVRC2012_devkit_t12"
KAGGLE_LABELS = "LOC_val_solution.csv"
TORCHVISION_META = "meta.bin"


def flat_images(val_dir: Path) -> list:
    """The images directly in `val_dir`, by name, when it has no class folders; [] otherwise."""
    entries = list(os.scandir(val_dir))
    if any(e.is_dir() and not e.name.startswith(".") for e in entries):
        return []
    return sorted(e.path for e in entries if e.is_file() and e.name.lower().endswith(IMG_EXTENSIONS))


def _devkit_wnids(read) -> list:
    """WordNet IDs of the validation images in file-name order, from the devkit's two files (`read(name)` gives a
    member's bytes)."""
    import scipy.io

    synsets = scipy.io.loadmat(io.BytesIO(read("data/meta.mat")), squeeze_me=True)["synsets"]
    id_to_wnid = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets}
    truth = read("data/ILSVRC2012_validation_ground_truth.txt").decode().split()
    return [id_to_wnid[int(i)] for i in truth]


def _from_devkit(root: Path) -> Optional[tuple]:
    archive, folder = root / f"{DEVKIT}.tar.gz", root / DEVKIT
    if folder.is_dir():
        return _devkit_wnids(lambda name: (folder / name).read_bytes()), str(folder)
    if archive.is_file():
        with tarfile.open(archive) as tar:
            return _devkit_wnids(lambda name: tar.extractfile(f"{DEVKIT}/{name}").read()), str(archive)
    if (root / TORCHVISION_META).is_file():
        from torchvision.datasets.imagenet import load_meta_file

        return list(load_meta_file(str(root))[1]), str(root / TORCHVISION_META)
    return None


def _kaggle_file(root: Path, val_dir: Path) -> Optional[Path]:
    """LOC_val_solution.csv in the data folder or a few folders above the validation folder (Kaggle's
    ILSVRC/Data/CLS-LOC/val/ has it three levels up)."""
    for folder in (root, *list(val_dir.parents)[:4]):
        if (folder / KAGGLE_LABELS).is_file():
            return folder / KAGGLE_LABELS
    return None


def flat_val_labels(root: Path, val_dir: Path, images: list) -> tuple[dict, str]:
    """{file stem: WordNet ID} of a flat validation folder and where the labels came from, or one line saying
    what the folder is and what to put beside it."""
    kaggle = _kaggle_file(root, val_dir)
    if kaggle is not None:
        try:
            with open(kaggle, newline="") as f:
                return {row["ImageId"]: row["PredictionString"].split()[0] for row in csv.DictReader(f)}, str(kaggle)
        except (KeyError, IndexError, ValueError, OSError) as e:
            raise UsageError(f"{kaggle}: not Kaggle's ImageId,PredictionString file ({e})") from None
    try:
        found = _from_devkit(root)
    except (KeyError, ValueError, OSError, tarfile.TarError) as e:
        raise UsageError(f"the ImageNet devkit in {root} cannot be read ({type(e).__name__}: {e})") from None
    if found is not None:
        wnids, source = found
        return {f"ILSVRC2012_val_{i + 1:08d}": w for i, w in enumerate(wnids)}, source
    raise UsageError(f"{val_dir} holds {len(images)} images and no class folders: ImageNet's validation split as "
                     f"image-net.org ships it. Put {DEVKIT}.tar.gz (its labels) or Kaggle's {KAGGLE_LABELS} in "
                     f"{root}: the labels are read from there and no file is moved")


def flat_val_split(root: Path, val_dir: Path, images: list, classes: list) -> tuple[list, list, str]:
    """(images, labels as indices into the training classes, a note) for a flat validation folder."""
    wnid_of, source = flat_val_labels(root, val_dir, images)
    index = {name: i for i, name in enumerate(classes)}
    labels = []
    for path in images:
        wnid = wnid_of.get(Path(path).stem)
        if wnid is None:
            raise UsageError(f"{source} has no label for {path}: is it this validation folder's labels file?")
        if wnid not in index:
            raise UsageError(f"{path} is labelled {wnid} by {source}, which is not a class folder of the training "
                             "split")
        labels.append(index[wnid])
    return images, labels, f"validation labels of the flat {val_dir} read from {source} ({len(images)} images)"
