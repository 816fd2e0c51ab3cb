"""A run's inputs: the data source (`load_data`) -> transforms -> the train and validation loaders (`build_inputs`),
and how each epoch starts. The model is not theirs: the runner prepares it.

The source is loaded before the config is resolved: whether its images are CIFAR-sized decides the default sizes.
Two classes behind one interface (`Inputs`: prepared_loaders, epoch_loader, checkpoint_record):
- `MapInputs` (every source but --streaming): a `datasets.Dataset` indexed by a shuffled DataLoader that
  `accelerator.prepare` shards; a mid-epoch resume skips batches with `accelerator.skip_first_batches`.
- `StreamInputs` (--streaming, vgg16/data/streaming.py): each process streams its own equal span; the loaders are NOT passed
  to `accelerator.prepare` (it would shard the stream again, accelerate#3547), so their batches are moved to the
  device here, and a mid-epoch resume starts the stream at the batch to come.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from accelerate.utils import broadcast_object_list, send_to_device
from torch.utils.data import DataLoader

from ..config import TrainConfig
from .pipeline import (AugmentedDataset, RepeatedAugmentation, SyntheticImages, build_loaders, eval_transform,
                   train_transform)
from .balance import BalancedBatches, class_counts, imbalance_note
from .decoding import decoding_for
from ..errors import UsageError
from ..model import head_for
from .shards import load_parquet_source, open_parquet
from .sources import ImageData, first_image_is_small, load_source
from .streaming import ParquetStream, StreamPlan, stream_loader, train_batches, val_batches


@dataclass(frozen=True)
class Inputs:
    """What a run needs of its data, whichever way it is read (`MapInputs`, `StreamInputs`)."""
    train_loader: DataLoader
    val_loader: DataLoader
    train_prepare: Callable[[tuple], tuple]
    """Loader batch -> (uint8 NCHW images, labels, bad) on the device."""
    val_prepare: Callable[[tuple], tuple]
    train_images: int
    val_images: int
    class_names: list
    name: str
    notes: tuple = ()
    data_fingerprint: str = ""
    """Which training data this is, for a resume to tell (datasets' fingerprint, or a stream's files and rows)."""
    class_counts: Optional[np.ndarray] = None
    """Training images per class, where the labels are at hand (not for a stream or synthetic data)."""
    sampler: str = "shuffle"
    """How an epoch's images are chosen, as a resume compares it: shuffle, or balanced with its draws."""

    def prepared_loaders(self, accelerator, *, train: bool = True) -> tuple:
        """(train loader, validation loader) as the run iterates them; the train loader is None when not `train`
        (evaluation only)."""
        loaders = [self.train_loader, self.val_loader] if train else [self.val_loader]
        prepared = self._prepare(accelerator, loaders)
        return (prepared[0], prepared[1]) if train else (None, prepared[0])

    def _prepare(self, accelerator, loaders: list) -> list:
        raise NotImplementedError

    def epoch_loader(self, accelerator, loader, epoch: int, skip_batches: int):
        """`loader` (the prepared train loader) positioned at `skip_batches` batches into `epoch`."""
        raise NotImplementedError

    def checkpoint_record(self) -> dict:
        """What a checkpoint must keep for a resume to read the same order."""
        return {}


def _as_list(prepared) -> list:
    return list(prepared) if isinstance(prepared, tuple) else [prepared]


@dataclass(frozen=True)
class MapInputs(Inputs):
    """A `datasets.Dataset` indexed by a shuffled DataLoader that `accelerator.prepare` shards."""
    loaders_on_device: bool = True
    """Whether `accelerator.prepare` should move the loaders' batches (False with --gpu-decode)."""
    batch_sampler: Optional[torch.utils.data.Sampler] = None
    """--ra-sampler's or --sampler balanced's batches of the global order, told each epoch."""

    def _prepare(self, accelerator, loaders: list) -> list:
        return _as_list(accelerator.prepare(*loaders, device_placement=[self.loaders_on_device] * len(loaders)))

    def epoch_loader(self, accelerator, loader, epoch: int, skip_batches: int):
        loader.dataset.set_epoch(epoch)  # augmentation seeds
        loader.set_epoch(epoch)  # shuffle order
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        # A mid-epoch resume: the very next batch of the same order, without loading the skipped ones.
        return accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader


@dataclass(frozen=True)
class StreamInputs(Inputs):
    """Parquet row groups streamed by each process (--streaming); the loaders are not prepared (see the top)."""
    stream_record: dict = field(default_factory=dict)
    """{'streams', 'processes'}: the order of an epoch depends on them."""

    def _prepare(self, accelerator, loaders: list) -> list:
        return loaders

    def epoch_loader(self, accelerator, loader, epoch: int, skip_batches: int):
        loader.dataset.set_epoch(epoch, skip_batches)
        return loader

    def checkpoint_record(self) -> dict:
        return {"streaming": self.stream_record}


def _transforms(cfg: TrainConfig) -> tuple:
    train = train_transform(image_size=cfg.image_size, small=head_for(cfg.image_size) == "small", hflip=cfg.hflip,
                            auto_augment=cfg.auto_augment, ra_magnitude=cfg.ra_magnitude,
                            augmix_severity=cfg.augmix_severity, random_erase=cfg.random_erase,
                            interpolation=cfg.interpolation)
    return train, eval_transform(resize_size=cfg.val_resize_size, crop_size=cfg.val_crop_size,
                                 interpolation=cfg.interpolation)


def load_data(cfg: TrainConfig, accelerator) -> ImageData:
    """The run's data before any transform: its splits (a `datasets.Dataset` each, or a `ParquetSplit` each with
    --streaming, or none for --dataset synthetic), classes and whether its images are CIFAR-sized. Only the data
    options of `cfg` are read, none of which the recipe or the facts change."""
    if cfg.dataset == "synthetic":
        return ImageData("synthetic", None, None, [str(i) for i in range(cfg.num_classes)], small_images=False)
    if cfg.streaming:
        source = _shared_parquet_source(cfg.data, accelerator)
        data = ImageData(source.name, source.train, source.val, list(source.train.class_names),
                         small_images=_first_image_is_small(source.train))
    else:
        with accelerator.main_process_first():  # datasets' cache is written once, then read by the others
            data = load_source(cfg.data, cfg.seed)
    _check_num_classes(cfg, data.name, data.class_names)
    return data


def _check_one_global_batch(cfg: TrainConfig, images: int, batches: int, processes: int) -> None:
    """Training needs at least one optimizer step per epoch."""
    if not cfg.evaluate and batches < 1:
        raise UsageError(f"the training set has {images} images, fewer than one global batch "
                         f"({cfg.batch_size} x {processes} processes x {cfg.grad_accum}): lower --batch-size")


def build_inputs(cfg: TrainConfig, data: ImageData, accelerator, stream_state: Optional[dict] = None) -> Inputs:
    """The loaders of `data` for the run `cfg` describes. stream_state: the `streaming` record of the checkpoint a
    --streaming run resumes from."""
    if cfg.streaming:
        return _stream_inputs(cfg, data, accelerator, stream_state)
    if cfg.dataset == "synthetic":
        per_step = cfg.batch_size * accelerator.num_processes
        train = SyntheticImages(100 * per_step * cfg.grad_accum, image_size=cfg.image_size,
                                num_classes=len(data.class_names), seed=cfg.seed)
        val = SyntheticImages(4 * per_step, image_size=cfg.val_crop_size, num_classes=len(data.class_names),
                              seed=cfg.seed + 1)
        fingerprint = f"synthetic {len(train)} seed {cfg.seed}"
    else:
        fingerprint = data.train._fingerprint  # a hash of the split's rows or files, stable across runs
        train_tf, val_tf = _transforms(cfg)
        train = AugmentedDataset(data.train, train_tf, cfg.seed, strict=cfg.strict_data)
        val = AugmentedDataset(data.val, val_tf, cfg.seed, strict=cfg.strict_data)
    # Where batches are decoded (loader workers, or the GPU with --gpu-decode) and how they reach the device.
    decoding = decoding_for(cfg.gpu_decode, accelerator.device)
    train_feed, val_feed = decoding.feed(train), decoding.feed(val)
    labels = data.train["label"] if data.train is not None else None
    counts = class_counts(labels, len(data.class_names)) if labels is not None else None
    batch_sampler, sampler = _batch_sampler(cfg, labels, len(train), accelerator.num_processes)
    train_loader, val_loader = build_loaders(train_feed.dataset, val_feed.dataset, batch_size=cfg.batch_size,
                                             val_batch_size=cfg.val_batch_size, workers=cfg.workers, seed=cfg.seed,
                                             pin_memory=accelerator.device.type != "cpu",
                                             collate_fn=decoding.collate_fn, train_batch_sampler=batch_sampler)
    _check_one_global_batch(cfg, len(train), len(train_loader) // (cfg.grad_accum * accelerator.num_processes),
                            accelerator.num_processes)
    note = imbalance_note(counts, data.class_names) if counts is not None and not cfg.evaluate else None
    return MapInputs(train_loader=train_loader, val_loader=val_loader, train_prepare=train_feed.prepare,
                     val_prepare=val_feed.prepare, train_images=len(train), val_images=len(val),
                     class_names=data.class_names, name=data.name, notes=(*data.notes, *([note] if note else [])),
                     data_fingerprint=fingerprint, class_counts=counts, sampler=sampler,
                     loaders_on_device=decoding.loader_on_device, batch_sampler=batch_sampler)


def _batch_sampler(cfg: TrainConfig, labels, images: int, processes: int) -> tuple:
    """(the batch sampler of --ra-sampler or --sampler balanced, or None for the shuffled default; how a resume
    names it)."""
    if cfg.ra_sampler:
        return RepeatedAugmentation(images, batch_size=cfg.batch_size, seed=cfg.seed, reps=cfg.ra_reps,
                                    num_processes=processes), "shuffle"
    if cfg.sampler == "balanced":
        sampler = BalancedBatches(labels, batch_size=cfg.batch_size, num_processes=processes, seed=cfg.seed,
                                  draws=cfg.epoch_size)
        return sampler, f"balanced, {sampler.draws} draws"
    return None, "shuffle"


def _check_num_classes(cfg: TrainConfig, name: str, class_names) -> None:
    if cfg.num_classes is not None and cfg.num_classes != len(class_names):
        raise UsageError(f"--num-classes {cfg.num_classes}, but {name} has {len(class_names)} classes: "
                         "drop --num-classes (it is for --dataset synthetic)")


def _first_image_is_small(split) -> bool:
    """Whether the first images of the first row group are CIFAR-sized (one row group read)."""
    table = open_parquet(split.files[int(split.piece_file[0])]).read_row_group(int(split.piece_group[0]),
                                                                              columns=[split.image_column])
    return first_image_is_small(table.column(0).to_pylist())


def _to_device(device) -> Callable[[tuple], tuple]:
    def move(batch: tuple) -> tuple:
        return tuple(send_to_device(batch[:3], device, non_blocking=True))  # the 4th, row ids, stays on the host
    return move


def _shared_parquet_source(data: str, accelerator):
    """The main process lists the files and reads the footers; the others receive its result, or its error (so
    no process waits for a broadcast that never comes): one set of hub requests per job, not per process."""
    if accelerator.num_processes == 1:
        return load_parquet_source(data)
    payload = [None]
    if accelerator.is_main_process:
        try:
            payload = [load_parquet_source(data)]
        except UsageError as e:
            payload = [e]
    payload = broadcast_object_list(payload)
    if isinstance(payload[0], UsageError):
        raise payload[0]
    return payload[0]


def _stream_inputs(cfg: TrainConfig, data: ImageData, accelerator, stream_state: Optional[dict]) -> Inputs:
    train_split, val_split = data.train, data.val
    train_tf, val_tf = _transforms(cfg)
    n, rank, workers = accelerator.num_processes, accelerator.process_index, cfg.workers
    # The order of an epoch depends on the stream count: a resumed run keeps the one it began with, whatever
    # --workers says now (a different worker count still gives the same batches, with more reading if it does
    # not divide the stream count).
    streams = max(1, workers)
    notes = []
    if stream_state:
        streams = int(stream_state["streams"])
        if workers > 0 and streams % workers:
            notes.append(f"the stream keeps the {streams} part(s) per process it was started with: with {workers} "
                         f"loader workers (not a divisor) some row groups are read by more than one worker")
    nb = train_batches(train_split.num_rows, num_processes=n, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum)
    _check_one_global_batch(cfg, train_split.num_rows, nb, n)
    train_plan = StreamPlan(num_processes=n, rank=rank, batch_size=cfg.batch_size, num_batches=nb, streams=streams,
                            shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed, train=True)
    val_plan = StreamPlan(num_processes=n, rank=rank, batch_size=cfg.val_batch_size,
                          num_batches=val_batches(val_split.num_rows, num_processes=n, batch_size=cfg.val_batch_size),
                          streams=streams, shuffle_buffer=0, seed=cfg.seed, train=False)
    train = ParquetStream(train_split, train_tf, train_plan, strict=cfg.strict_data,
                          image_shape=(3, cfg.image_size, cfg.image_size))
    val = ParquetStream(val_split, val_tf, val_plan, strict=cfg.strict_data,
                        image_shape=(3, cfg.val_crop_size, cfg.val_crop_size))
    pin = accelerator.device.type != "cpu"
    left_out = train_split.num_rows - nb * cfg.batch_size * n
    notes.append(f"streaming {data.name}: {train_split.num_rows} train rows in {len(train_split.piece_rows)} row "
                 f"groups of {len(train_split.files)} files, {nb} batches per process per epoch"
                 + (f" ({left_out} rows left out of each epoch, different ones every epoch)" if left_out else "")
                 + f", shuffle buffer {cfg.shuffle_buffer} rows per "
                 f"process in {streams} part(s)")
    move = _to_device(accelerator.device)
    return StreamInputs(train_loader=stream_loader(train, workers=workers, seed=cfg.seed, pin_memory=pin),
                        val_loader=stream_loader(val, workers=workers, seed=cfg.seed, pin_memory=pin),
                        train_prepare=move, val_prepare=move, train_images=train_split.num_rows,
                        val_images=val_split.num_rows, class_names=data.class_names, name=data.name,
                        notes=tuple(notes), data_fingerprint=_stream_fingerprint(train_split.files, train_split.num_rows),
                        stream_record={"streams": streams, "processes": n})


def _stream_fingerprint(files, rows: int) -> str:
    return hashlib.sha256("\n".join(map(str, [rows, *files])).encode("utf-8", "surrogateescape")).hexdigest()[:16]
