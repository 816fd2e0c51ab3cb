"""`--streaming`: read parquet row groups as a stream, every process an equal, distinct span of each epoch.

The order of an epoch is a pure function of (seed, epoch, process count, stream count) and the row-group sizes in
the files' footers, computed the same way in every process and worker without reading an image:

1. the row groups in a seeded permutation (a new one each epoch); their rows, concatenated, are the epoch's order;
2. process r takes rows [r * T // N, r * T // N + b * B) of it, where b = (T // N) // B batches of B rows (cut to
   whole optimizer steps), the same b for every process: equal step counts, no hang, each row at most once;
3. a process's span is cut into `streams` consecutive parts, one per loader worker; batch k of the process comes
   from part k % streams, whose rows pass through a seeded shuffle buffer of its own (held as row ids, so it costs
   nothing to rebuild);
4. loader worker w of W yields batches start + w, start + w + W, ...: PyTorch's DataLoader takes one batch from
   each worker in turn, so the batches arrive in order 0, 1, 2, ... for any W, and a resumed epoch starts at
   batch `start` exactly. With W == streams each worker reads only its own part's row groups.

Resuming is exact (nothing in a shuffle buffer is lost): the buffer is replayed on row ids, and only the row
groups that still hold unread rows are read again. Validation takes rows [r * T // N, (r + 1) * T // N) in file
order and pads the last batches (flag -1), so gathering counts every image once.

We write this instead of using `datasets.IterableDataset` + `split_dataset_by_node`: that gives whole shards per
process (unequal counts: the DDP hang of datasets#6437) or, when the shard count does not divide by the process
count, has every process read everything and keep one example in N; and its shuffle buffer is lost on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .images import BAD_IMAGE_ERRORS
from .pipeline import loader_settings, next_readable, sample_seed, seeded, skip_unreadable, stack_images
from .reduced import SizedDecoder
from ..errors import RunFailure
from .shards import ParquetSplit, open_parquet

PAD = -1
"""The `bad` flag of a padding row in a validation batch (a real unreadable image is 1, a good one 0)."""


def train_batches(num_rows: int, *, num_processes: int, batch_size: int, grad_accum: int = 1) -> int:
    """Batches each process trains on per epoch: its equal share of rows in whole batches and whole steps."""
    return (num_rows // num_processes // batch_size) // grad_accum * grad_accum


def val_batches(num_rows: int, *, num_processes: int, batch_size: int) -> int:
    """Batches each process evaluates: enough for the largest share (ceil(T / N) rows)."""
    return -(-(-(-num_rows // num_processes)) // batch_size)


@dataclass(frozen=True)
class StreamPlan:
    """What all processes agree on; `rank` is this process."""

    num_processes: int
    rank: int
    batch_size: int
    num_batches: int
    streams: int
    shuffle_buffer: int
    """Rows held for shuffling per process (divided among its streams); 0 or 1: no buffer (validation)."""
    seed: int
    train: bool


def buffer_shuffle(items: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A shuffle buffer of `size` (the usual streaming one: fill, then each new item replaces a random pick,
    which is emitted), then the rest shuffled: `items` in the order the buffer emits them."""
    if size <= 1 or len(items) <= 1:
        return items.copy()
    size = min(size, len(items))
    out = np.empty_like(items)
    buffer = items[:size].tolist()
    picks = rng.integers(0, size, len(items) - size).tolist()
    for o, (item, pick) in enumerate(zip(items[size:].tolist(), picks)):
        out[o] = buffer[pick]
        buffer[pick] = item
    out[len(items) - size:] = np.asarray(buffer, dtype=items.dtype)[rng.permutation(size)]
    return out


def epoch_order(split: ParquetSplit, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """All row ids in the epoch's order: row groups permuted (seeded by seed and epoch), rows in file order."""
    pieces = np.random.default_rng([seed, epoch, 0]).permutation(len(split.piece_rows)) if shuffle \
        else np.arange(len(split.piece_rows))
    rows, starts = split.piece_rows[pieces], split.piece_start[pieces]
    offsets = np.arange(rows.sum()) - np.repeat(np.cumsum(rows) - rows, rows)
    return np.repeat(starts, rows) + offsets


class EpochOrder:
    """The row ids of each of this process's batches in one epoch (see the module docstring)."""

    def __init__(self, split: ParquetSplit, plan: StreamPlan, epoch: int):
        self.plan, self.epoch = plan, epoch
        order = epoch_order(split, seed=plan.seed, epoch=epoch, shuffle=plan.train)
        total, n, r = len(order), plan.num_processes, plan.rank
        if plan.train:
            span = order[r * (total // n):][:plan.num_batches * plan.batch_size]
        else:
            span = order[r * total // n:(r + 1) * total // n]
        self.parts, start = [], 0
        for s in range(plan.streams):
            length = len(range(s, plan.num_batches, plan.streams)) * plan.batch_size
            self.parts.append(span[start:start + length])
            start += length
        self._shuffled: dict = {}

    def _part(self, s: int) -> np.ndarray:
        if s not in self._shuffled:
            plan = self.plan
            size = plan.shuffle_buffer // plan.streams if plan.train else 0
            rng = np.random.default_rng([plan.seed, self.epoch, 1, plan.rank, s])
            self._shuffled[s] = buffer_shuffle(self.parts[s], size, rng)
        return self._shuffled[s]

    def batch(self, k: int) -> np.ndarray:
        """Row ids of batch k (validation: fewer than batch_size, or none, at the end of the span)."""
        b, s = self.plan.batch_size, k % self.plan.streams
        m = k // self.plan.streams
        return self._part(s)[m * b:(m + 1) * b]


class _RowReader:
    """Reads the rows a worker will use, a row group at a time, keeping only those still to come."""

    def __init__(self, split: ParquetSplit, wanted: set):
        self.split, self.wanted = split, wanted
        self.starts = split.piece_start
        self.files: dict = {}
        self.cache: dict = {}

    def _load(self, row: int) -> None:
        split = self.split
        piece = int(np.searchsorted(self.starts, row, side="right")) - 1
        f, group = int(split.piece_file[piece]), int(split.piece_group[piece])
        try:
            if f not in self.files:
                self.files[f] = open_parquet(split.files[f])
            table = self.files[f].read_row_group(group, columns=[split.image_column, split.label_column])
        except (OSError, ValueError) as e:  # a vanished or damaged file, a lost connection (pyarrow: ArrowInvalid)
            raise RunFailure(f"could not read row group {group} of {split.files[f]} "
                             f"({str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}); the run "
                             "stops here: --resume auto continues from the newest checkpoint") from None
        first = int(self.starts[piece])
        for i, (image, label) in enumerate(zip(table.column(0).to_pylist(), table.column(1).to_pylist())):
            if first + i in self.wanted:
                self.cache[first + i] = (image, label)

    def take(self, row: int) -> tuple:
        if row not in self.cache:
            self._load(row)
        self.wanted.discard(row)
        return self.cache.pop(row)

    def where(self, row: int) -> str:
        split = self.split
        piece = int(np.searchsorted(self.starts, row, side="right")) - 1
        file_first = int(self.starts[np.flatnonzero(split.piece_file == split.piece_file[piece])[0]])
        return f"{split.files[split.piece_file[piece]]} row {row - file_first}"


class ParquetStream(IterableDataset):
    """Yields whole batches (uint8 images, labels, bad flags, row ids) of this process's share of an epoch.

    Use with DataLoader(batch_size=None). `set_epoch(epoch, start)` before each epoch (start: batches of it
    already done, for a mid-epoch resume); kept in shared memory so persistent workers see it."""

    def __init__(self, split: ParquetSplit, transform, plan: StreamPlan, *, strict: bool = False,
                 image_shape: tuple = (3, 32, 32)):
        self.split, self.transform, self.plan, self.strict = split, transform, plan, strict
        self.decoder = SizedDecoder(transform)
        self.image_shape = image_shape
        self._state = torch.zeros(2, dtype=torch.int64).share_memory_()
        self._reported: set = set()

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self._state[0], self._state[1] = epoch, start

    def __len__(self) -> int:
        return self.plan.num_batches

    def __iter__(self):
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch, start = int(self._state[0]), int(self._state[1])
        order = EpochOrder(self.split, self.plan, epoch)
        mine = range(start + worker, self.plan.num_batches, workers)
        wanted = set()
        for k in mine:
            wanted.update(order.batch(k).tolist())
        reader = _RowReader(self.split, wanted)
        for k in mine:
            yield self._batch(order.batch(k).tolist(), reader, epoch)

    def _sample(self, raw: dict, row: int, epoch: int) -> tuple:
        """(image, None), or (None, the error) for a file that cannot be decoded. Decoded and transformed under
        the row's seed, both: a large JPEG's crop is drawn from its header before it is decoded (reduced.py)."""
        with seeded(sample_seed(self.plan.seed, epoch, row)):
            try:
                decoded = self.decoder.decode(raw)
            except BAD_IMAGE_ERRORS as e:
                return None, e
            return self.decoder.finish(decoded), None

    def _batch(self, rows: list, reader: _RowReader, epoch: int) -> tuple:
        taken = [reader.take(row) for row in rows]  # (raw, label) per row
        images: list = []
        for row, (raw, _) in zip(rows, taken):
            image, error = self._sample(raw, row, epoch)
            if error is not None:  # said once per worker
                skip_unreadable(raw.get("path") or reader.where(row), error, strict=self.strict, reported=self._reported)
            images.append(image)
        readable = [i for i, image in enumerate(images) if image is not None]
        if rows and not readable:
            raise RunFailure(f"all {len(rows)} images of a batch are unreadable ({reader.where(rows[0])} ...): is the "
                             "data intact? (python -m vgg16.check_data --data ... lists them)")
        labels, bad = [], []
        for i, row in enumerate(rows):
            # The one policy (pipeline.next_readable), over the batch: a stream's next rows are not at hand.
            source = i if images[i] is not None else \
                next_readable(i + 1, len(rows), lambda j: images[j] is not None, limit=len(rows))
            if source != i:
                images[i] = self._sample(taken[source][0], row, epoch)[0]
            labels.append(taken[source][1])
            bad.append(0 if source == i else 1)
        pad = self.plan.batch_size - len(rows) if not self.plan.train else 0
        if pad:
            images.extend([torch.zeros(self.image_shape, dtype=torch.uint8)] * pad)
            labels.extend([0] * pad)
            bad.extend([PAD] * pad)
        return (stack_images(images), torch.tensor(labels, dtype=torch.int64), torch.tensor(bad, dtype=torch.int64),
                torch.tensor(rows + [PAD] * pad, dtype=torch.int64))


def stream_loader(dataset: ParquetStream, *, workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """The DataLoader for a ParquetStream: batches come whole from the workers. Not for `accelerator.prepare`:
    Accelerate would shard the stream a second time, or read it all on process 0 and send it out
    (accelerate#3547)."""
    return DataLoader(dataset, batch_size=None, **loader_settings(workers=workers, seed=seed, pin_memory=pin_memory))
