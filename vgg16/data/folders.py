"""ImageNet-style class folders as a filesystem holds them: root/<class>/**/<image>, with symlinks, cycles and file
names that are not valid UTF-8 (docs/cluster.md "Image folders as filesystems hold them")."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

# torchvision.datasets.folder.IMG_EXTENSIONS, which ImageFolder accepts.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


@dataclass
class FolderScan:
    images: list
    """A path per image, or {'bytes', 'path': None} for a file whose name is not valid UTF-8 (Arrow holds UTF-8
    text only), read at the scan."""
    labels: list
    classes: list
    notes: tuple = ()


def _shown(path: str) -> str:
    """A path for a message, undecodable bytes shown as \\xNN."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _inside(real: str, roots: list) -> bool:
    return any(real == r or real.startswith(r + os.sep) for r in roots)


def _walk_images(top: str, real_top: str, *, ancestors: frozenset, through_link: bool, other_classes: list,
                 found: list, skipped: dict) -> None:
    """Append (path, real path, reached through a link) for the images under `top`, in os.walk's order (a folder's
    files sorted, then its sub-folders sorted). Links are followed, except into a folder already on the current
    path (a cycle) or into another class's folder (its images belong to that class, which counts them)."""
    with os.scandir(top) as it:
        entries = sorted(it, key=lambda e: e.name)
    folders = []
    for e in entries:
        link = e.is_symlink()
        try:
            is_dir = e.is_dir()
        except OSError:  # a dangling link
            continue
        if is_dir:
            folders.append((e, link))
        elif e.name.lower().endswith(IMG_EXTENSIONS) and (not link or os.path.isfile(e.path)):
            real = os.path.realpath(e.path) if link else os.path.join(real_top, e.name)
            found.append((e.path, real, link or through_link))
    for e, link in folders:
        real = os.path.realpath(e.path) if link else os.path.join(real_top, e.name)
        if any(_inside(a, [real]) for a in ancestors):  # back into this folder or one above it
            skipped["cycle"].append(e.path)
        elif _inside(real, other_classes):
            skipped["other class"].append(e.path)
        else:
            _walk_images(e.path, real, ancestors=ancestors | {real}, through_link=through_link or link,
                         other_classes=other_classes, found=found, skipped=skipped)


def scan_class_folder(root: Path) -> FolderScan:
    """root/<class>/**/<image>, classes sorted by name as torchvision's ImageFolder; each image counted once,
    under the class whose folder really holds it.

    A directory scan instead of `load_dataset("imagefolder")`, which re-resolves every file on every start
    (87 s for 105,000 files here even with a warm cache; about 20 minutes at ImageNet scale).
    """
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    real_roots = [os.path.realpath(root / name) for name in classes]
    images, labels, empty = [], [], []
    skipped: dict = {"cycle": [], "other class": [], "twice": [], "not utf-8": []}
    seen_through_links: set = set()
    for label, name in enumerate(classes):
        found: list = []
        others = [r for i, r in enumerate(real_roots) if i != label and not _inside(real_roots[label], [r])]
        _walk_images(str(root / name), real_roots[label], ancestors=frozenset({real_roots[label]}), through_link=False,
                     other_classes=others, found=found, skipped=skipped)
        plain = {real for _, real, via_link in found if not via_link}
        kept = 0
        for path, real, via_link in found:
            if via_link:
                if _inside(real, others):
                    skipped["other class"].append(path)
                    continue
                if real in plain or real in seen_through_links:
                    skipped["twice"].append(path)
                    continue
                seen_through_links.add(real)
            try:
                path.encode("utf-8")
                images.append(path)
            except UnicodeEncodeError:
                with open(path, "rb") as f:
                    images.append({"bytes": f.read(), "path": None})
                skipped["not utf-8"].append(path)
            kept += 1
        if not kept:
            empty.append(name)
        labels.extend([label] * kept)
    if empty:
        raise UsageError(f"{root} has class folders without images: {', '.join(map(_shown, empty[:5]))}"
                         f"{' ...' if len(empty) > 5 else ''} (images end in {', '.join(IMG_EXTENSIONS)})")
    return FolderScan(images, labels, [_shown(c) for c in classes], _scan_notes(root, skipped))


def _scan_notes(root: Path, skipped: dict) -> tuple:
    what = {"cycle": "link(s) back into a folder above them not followed (a cycle)",
            "other class": "link(s) into another class's folder not followed (those images count under their own class)",
            "twice": "image(s) reached a second time through a link counted once",
            "not utf-8": "file name(s) that are not valid UTF-8 read by content"}
    parts = [f"{len(paths)} {what[kind]}: {', '.join(_shown(os.path.relpath(p, root)) for p in paths[:3])}"
             + (" ..." if len(paths) > 3 else "") for kind, paths in skipped.items() if paths]
    return (f"{root}: " + "; ".join(parts),) if parts else ()
