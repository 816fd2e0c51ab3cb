"""Parquet shards as `--streaming` reads them: which files make each split, and their row groups, from the
files' footers alone (no image is read, nothing is downloaded or converted).

The files come from `datasets` itself (`load_dataset_builder(...).config.data_files`), so a hub name and a local
folder in the hub layout (`data/train-00000-of-00294.parquet`, `plain_text/test-....parquet`) resolve the same way
`load_dataset` would resolve them; a hub file is an `hf://` URL that fsspec (huggingface_hub's file system) reads
by byte ranges. `datasets`' own `IterableDataset` is not used for reading: `split_dataset_by_node` gives whole
shards per process, so processes see unequal counts (and DDP hangs) unless the shard count divides evenly, and
falls back to every process reading everything when it does not (datasets#6437). Row-group
metadata lets us give every process an equal span of rows instead (vgg16/data/streaming.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import datasets
import numpy as np
import pyarrow.parquet as pq

from ..errors import UsageError
from .sources import VAL_SPLIT_NAMES, check_hub_name, image_and_label_columns


def open_parquet(url: str) -> pq.ParquetFile:
    """A local path, or any fsspec URL (hf://datasets/...): only the footer is read here, row groups on demand."""
    if "://" not in url:
        return pq.ParquetFile(url, memory_map=True)  # a local file: pages come from the page cache, not copied
    import fsspec

    return pq.ParquetFile(fsspec.open(url, "rb").open())


@dataclass(frozen=True)
class ParquetSplit:
    """One split: its files and, for every row group in file order, the file, the group and its row count.

    Row ids are positions in that order (file 0's rows first): they name an example for the augmentation seed
    and for the tests, and do not depend on how many processes or workers read them."""

    files: tuple
    piece_file: np.ndarray
    piece_group: np.ndarray
    piece_rows: np.ndarray
    image_column: str
    label_column: str
    class_names: tuple

    @property
    def num_rows(self) -> int:
        return int(self.piece_rows.sum())

    @property
    def piece_start(self) -> np.ndarray:
        """The row id of each row group's first row."""
        return np.concatenate([[0], np.cumsum(self.piece_rows)[:-1]]).astype(np.int64)


def _class_names(features: datasets.Features, label_column: str, files: list, where: str) -> tuple:
    label = features[label_column]
    if isinstance(label, datasets.ClassLabel):
        return tuple(label.names)
    # No ClassLabel in the files' metadata: the label column alone is read (a few bytes per row) to list them.
    values = set()
    for f in files:
        values.update(open_parquet(f).read(columns=[label_column]).column(0).to_pylist())
    if all(isinstance(v, int) for v in values):
        if min(values) < 0:
            raise UsageError(f"{where}: negative labels in column {label_column!r}")
        return tuple(str(i) for i in range(max(values) + 1))
    raise UsageError(f"{where}: column {label_column!r} holds {sorted(map(str, values))[:3]}...; --streaming needs "
                     "integer labels or a ClassLabel (files written by datasets have one)")


def scan_split(files: list, where: str, class_names: Optional[tuple] = None) -> ParquetSplit:
    """The row groups of `files` from their footers; the image/label columns from the first file's schema."""
    def footer(f: str) -> pq.ParquetFile:
        try:
            return open_parquet(f)
        except (OSError, ValueError) as e:  # pyarrow says ArrowInvalid (a ValueError) for a file that is not parquet
            raise UsageError(f"{where}: cannot read the parquet footer of {f} ({str(e).splitlines()[0]})") from None

    # Footers in parallel: from the hub each is a round trip or two (308 files for ImageNet's train + validation).
    with ThreadPoolExecutor(max_workers=16) as pool:
        footers = list(pool.map(footer, files))
    piece_file, piece_group, piece_rows = [], [], []
    first = footers[0]
    for i, meta in enumerate(footers):
        for g in range(meta.metadata.num_row_groups):
            piece_file.append(i)
            piece_group.append(g)
            piece_rows.append(meta.metadata.row_group(g).num_rows)
    features = datasets.Features.from_arrow_schema(first.schema_arrow)
    image_column, label_column = image_and_label_columns(features, list(features), where)
    if class_names is None:
        class_names = _class_names(features, label_column, files, where)
    return ParquetSplit(files=tuple(files), piece_file=np.array(piece_file, dtype=np.int64),
                        piece_group=np.array(piece_group, dtype=np.int64), piece_rows=np.array(piece_rows, dtype=np.int64),
                        image_column=image_column, label_column=label_column, class_names=tuple(class_names))


def split_files(data: str) -> dict:
    """{split: [file or URL, ...]} as `datasets` resolves `data` (a hub name or a local folder)."""
    local = Path(data).expanduser()
    if not local.exists():
        check_hub_name(data)
    try:
        builder = datasets.load_dataset_builder(str(local) if local.exists() else data)
    except Exception as e:  # offline, unknown name, gated repo: all end the same way for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"--data {data!r} --streaming: could not list its files ({first})") from None
    files = {str(split): list(paths) for split, paths in (builder.config.data_files or {}).items()}
    others = sorted({Path(str(f)).suffix for paths in files.values() for f in paths} - {".parquet"})
    if not files or others:
        raise UsageError(f"--data {data!r}: --streaming reads parquet files, and this dataset has "
                         f"{', '.join(others) or 'none'}; drop --streaming to load it as a whole")
    return files


@dataclass(frozen=True)
class ParquetSource:
    name: str
    train: ParquetSplit
    val: ParquetSplit


def load_parquet_source(data: str) -> ParquetSource:
    """Train and validation splits of a hub dataset or a local hub-layout folder, from metadata only."""
    files = split_files(data)
    if "train" not in files:
        raise UsageError(f"--data {data!r} has no train split (it has {', '.join(files)})")
    val_name = next((n for n in VAL_SPLIT_NAMES if n in files), None)
    if val_name is None:
        raise UsageError(f"--data {data!r} has no validation split (it has {', '.join(files)}); --streaming does not "
                         "hold one out: drop --streaming, which holds out 10% of train")
    train = scan_split(files["train"], f"{data} (train)")
    val = scan_split(files[val_name], f"{data} ({val_name})", class_names=train.class_names)
    if train.num_rows == 0:
        raise UsageError(f"--data {data!r}: the train split has no rows")
    return ParquetSource(Path(data.rstrip("/")).name, train, val)
