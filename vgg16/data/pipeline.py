"""From `datasets.Dataset` to batches of uint8 images: transform presets, per-sample seeding, synthetic data,
and the DataLoaders.

Images stay uint8 (4x less to copy than float32) until they are on the device, where `engine.Normalizer` turns them
into normalised floats.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Optional

import datasets
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ..config import default_val_resize
from ..errors import RunFailure
from .batch_buffers import stack_images
from .images import BAD_IMAGE_ERRORS
from .reduced import SizedDecoder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- transform presets
# The mean colour as uint8: erasing with it is erasing with 0 after normalisation, as torchvision's reference
# (which erases the normalised float tensor) does.
MEAN_PIXEL = [round(255 * m) for m in IMAGENET_MEAN]


def auto_augment_transform(policy: str | None, *, interpolation, ra_magnitude: int = 9, augmix_severity: int = 3):
    """torchvision's --auto-augment choices (references/classification/presets.py), on uint8 images."""
    if policy is None:
        return None
    if policy == "ra":
        return v2.RandAugment(interpolation=interpolation, magnitude=ra_magnitude)
    if policy == "ta_wide":
        return v2.TrivialAugmentWide(interpolation=interpolation)
    if policy == "augmix":
        return v2.AugMix(interpolation=interpolation, severity=augmix_severity)
    return v2.AutoAugment(v2.AutoAugmentPolicy(policy), interpolation=interpolation)


def train_transform(*, image_size: int, small: bool, hflip: float = 0.5, auto_augment: str | None = None,
                    ra_magnitude: int = 9, augmix_severity: int = 3, random_erase: float = 0.0,
                    interpolation: str = "bilinear") -> v2.Compose:
    """torchvision's ClassificationPresetTrain in uint8: RandomResizedCrop (or, below 64 px, pad-4 random crop),
    flip, auto-augment, then random erasing; normalisation happens on the device."""
    mode = v2.InterpolationMode(interpolation)
    if small:
        steps = [v2.Resize(image_size, interpolation=mode, antialias=True), v2.RandomCrop(image_size, padding=4)]
    else:
        steps = [v2.RandomResizedCrop(image_size, interpolation=mode, antialias=True)]
    if hflip > 0:
        steps.append(v2.RandomHorizontalFlip(hflip))
    # The policies rotate and shear; torchvision does that on tensors (our decoded JPEGs) with nearest or bilinear
    # only, so bicubic (fine for the resize above) falls back to bilinear there.
    policy_mode = v2.InterpolationMode.BILINEAR if mode == v2.InterpolationMode.BICUBIC else mode
    policy = auto_augment_transform(auto_augment, interpolation=policy_mode, ra_magnitude=ra_magnitude,
                                    augmix_severity=augmix_severity)
    steps += [policy] if policy else []
    steps.append(v2.PILToTensor())
    if random_erase > 0:
        steps.append(v2.RandomErasing(p=random_erase, value=MEAN_PIXEL))
    return v2.Compose(steps)


def eval_sizes(config: dict) -> tuple[int, int]:
    """(resize, crop) of a model's config.json; folders exported before these keys existed used the training
    size with torchvision's 256/224 margin (none below 64 px)."""
    crop = config.get("val_crop_size") or config["image_size"]
    small = config.get("head") == "small"
    return config.get("val_resize_size") or default_val_resize(crop, small), crop


def eval_transform(*, resize_size: int, crop_size: int, interpolation: str) -> v2.Compose:
    """Resize the short side, centre crop (torchvision's ClassificationPresetEval): validation, `predict` and the
    feature extractor all take their evaluation transform from here, with the interpolation the model was trained
    with (its config's, or its starting weights')."""
    mode = v2.InterpolationMode(interpolation)
    return v2.Compose([v2.Resize(resize_size, interpolation=mode, antialias=True), v2.CenterCrop(crop_size),
                       v2.PILToTensor()])


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, sample): augmentation then depends on neither worker
    count nor process count, and a resumed run draws exactly what an uninterrupted one would."""
    return ((seed * 1_000_003 + epoch) * 2_147_483_647 + index) & 0x7FFF_FFFF_FFFF_FFFF


MAX_REPLACEMENTS = 16


def skip_unreadable(where: str, error: BaseException, *, strict: bool, reported: set) -> None:
    """An unreadable image: stop naming it with --strict-data, else warn once per process (or worker) and go on
    (the caller replaces it and counts it)."""
    if strict:
        raise RunFailure(f"unreadable image {where} ({error}); --strict-data stops at the first one "
                         "(without it, bad images are skipped and counted)") from None
    if where not in reported:
        reported.add(where)
        print(f"warning: skipping unreadable image {where} ({error})", file=sys.stderr, flush=True)


def next_readable(start: int, count: int, readable: Callable[[int], bool], *, limit: int) -> Optional[int]:
    """Which example takes an unreadable one's place, for every way of reading: the first readable one from
    `start` on in the order being read (the dataset's for map-style data, the batch's for a stream), wrapping
    around, at most `limit` looked at; None when none of them is. The stand-in is decoded again under the
    unreadable example's seed and flagged `bad`, so the batch keeps its size and validation leaves it out."""
    for step in range(min(limit, count)):
        position = (start + step) % count
        if readable(position):
            return position
    return None


def describe(raw: dict, index: int) -> str:
    return raw.get("path") or f"image #{index}"


@contextmanager
def seeded(seed: int):
    """Draw from the global CPU generator seeded with `seed`, and restore it afterwards (dropout and shuffling
    never see it). Not torch.random.fork_rng + torch.manual_seed: those also queue seeds for CUDA, XPU and MTIA,
    each with a stack trace, 0.5 ms a call here, a quarter of a sample's whole decode-and-augment time."""
    generator = torch.default_generator
    state = generator.get_state()
    generator.manual_seed(seed)
    try:
        yield
    finally:
        generator.set_state(state)


class AugmentedDataset(Dataset):
    """Wraps a datasets.Dataset: decode to RGB, transform with a per-sample seed.

    Returns (uint8 CHW image, label, bad) where `bad` counts the unreadable files met for this sample: an
    unreadable file is reported once per process, and replaced by the next sample (unless strict, when the run
    stops naming it), so one bad JPEG never costs a run. The replacement keeps the original index's seed.
    A JPEG is decoded at reduced scale where the first transform keeps few of its pixels (reduced.py).
    """

    def __init__(self, data, transform, seed: int, strict: bool = False):
        # Undecoded view: we decode ourselves, to catch bad files and name them.
        self.data = data.cast_column("image", datasets.Image(decode=False))
        self.transform = transform
        self.decoder = SizedDecoder(transform)
        self.seed = seed
        self.strict = strict
        # Shared memory, so persistent workers see the epoch the main process sets before each epoch.
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()
        self._reported: set = set()

    def set_epoch(self, epoch: int) -> None:
        self._epoch[0] = epoch

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int):
        return self._sample(index, self.data[index % len(self.data)])

    def __getitems__(self, indices: list) -> list:
        """A DataLoader batch: its rows read from Arrow in one `take` rather than formatted by `datasets` one
        row at a time (docs/performance.md); each sample as `__getitem__` gives it."""
        rows = self.data[[index % len(self.data) for index in indices]]
        return [self._sample(index, {"image": image, "label": label})
                for index, image, label in zip(indices, rows["image"], rows["label"])]

    def _sample(self, index: int, first: dict):
        # An index past the end is a repeated copy (RepeatedAugmentation): the same image, its own seed.
        start, seed = index % len(self.data), sample_seed(self.seed, int(self._epoch[0]), index)
        made: dict = {}

        def readable(i: int) -> bool:
            example = first if i == start else self.data[i]
            # The seed before the decode: the crop is drawn from the file's header (SizedDecoder), and a
            # replacement draws from the same seed again.
            with seeded(seed):
                try:
                    decoded = self.decoder.decode(example["image"])
                except BAD_IMAGE_ERRORS as e:
                    skip_unreadable(describe(example["image"], i), e, strict=self.strict, reported=self._reported)
                    return False
                made[i] = self.decoder.finish(decoded), example["label"]
            return True

        source = next_readable(start, len(self.data), readable, limit=MAX_REPLACEMENTS)
        if source is None:
            raise RunFailure(f"{MAX_REPLACEMENTS} unreadable images in a row from image #{index}: is the data "
                             "intact? (python -m vgg16.check_data --data ... lists them)")
        image, label = made[source]
        return image, label, (source - start) % len(self.data)


class SyntheticImages(Dataset):
    """Random uint8 images for throughput runs: a small fixed pool, so producing a sample costs nothing."""

    POOL = 64

    def __init__(self, length: int, *, image_size: int, num_classes: int, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.pool = torch.randint(0, 256, (self.POOL, 3, image_size, image_size), dtype=torch.uint8, generator=g)
        self.length = length
        self.num_classes = num_classes

    def set_epoch(self, epoch: int) -> None:  # same interface as AugmentedDataset
        pass

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        return self.pool[index % self.POOL], index % self.num_classes, 0


# ---------------------------------------------------------------- repeated augmentation
class RepeatedAugmentation(torch.utils.data.Sampler):
    """torchvision's RASampler (references/classification/sampler.py) as a batch sampler of the global order.

    torchvision's sampler splits by rank itself: the seeded permutation, each index repeated `reps` times in a
    row, then rank r takes every num_replicas-th entry from r. Accelerate shards a batch sampler once more (rank r
    gets batches r, r + N, ...), so this yields the batches in the order that gives every rank exactly
    torchvision's stream. A repeated copy is index + k x len(dataset), so each copy gets its own augmentation
    seed (AugmentedDataset reads index % len). Unlike torchvision, the epoch keeps len(dataset) samples rounded
    down to whole global batches (torchvision rounds to 256, which leaves small sets empty).
    """

    def __init__(self, dataset_len: int, *, batch_size: int, num_processes: int, seed: int, reps: int = 3):
        self.n, self.batch_size, self.num_processes, self.seed, self.reps = dataset_len, batch_size, num_processes, seed, reps
        self.epoch = 0
        self.per_rank_batches = dataset_len // (batch_size * num_processes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def rank_streams(self) -> list:
        """What torchvision's RASampler gives each rank, with copies numbered, cut to whole batches."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        repeated = [i + k * self.n for i in order for k in range(self.reps)]
        keep = self.per_rank_batches * self.batch_size
        return [repeated[r::self.num_processes][:keep] for r in range(self.num_processes)]

    def __iter__(self):
        streams = self.rank_streams()
        for b in range(self.per_rank_batches):
            for stream in streams:
                yield stream[b * self.batch_size:(b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.per_rank_batches * self.num_processes


# ---------------------------------------------------------------- loaders
def collate_samples(batch: list) -> list:
    """DataLoader's default_collate for (image, label, bad, ...) samples, the images stacked by `stack_images`
    (batch_buffers.py: in a worker into reused shared memory, so they reach the main process uncopied)."""
    return [stack_images([sample[0] for sample in batch]),
            *torch.utils.data.default_collate([sample[1:] for sample in batch])]


def loader_settings(*, workers: int, seed: int, pin_memory: bool) -> dict:
    """The DataLoader settings every loader of a run shares (these, the streams' included).

    A generator of its own per loader: each new iterator draws its workers' base seed from it, and from the
    global generator (which dropout uses) without one, which would shift dropout after a resume. Workers stay
    between epochs and keep 4 batches each in flight."""
    settings = dict(num_workers=workers, pin_memory=pin_memory, generator=torch.Generator().manual_seed(seed))
    if workers > 0:
        settings.update(persistent_workers=True, prefetch_factor=4)
    return settings


def build_loaders(train_set: Dataset, val_set: Dataset, *, batch_size: int, workers: int, seed: int,
                  pin_memory: bool, collate_fn=None, train_batch_sampler=None,
                  val_batch_size: Optional[int] = None) -> tuple[DataLoader, DataLoader]:
    """Train: shuffled (by its own generator, so the order depends on the seed alone), drop_last so every
    process runs the same number of steps; or batches from `train_batch_sampler` (repeated augmentation).
    Val: in order, nothing dropped; Accelerate pads the last batch across processes and `gather_for_metrics`
    removes the padding again."""
    common = dict(collate_fn=collate_fn or collate_samples)
    if train_batch_sampler is not None:
        train = DataLoader(train_set, batch_sampler=train_batch_sampler,
                           **common, **loader_settings(workers=workers, seed=seed, pin_memory=pin_memory))
    else:
        train = DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True,
                           **common, **loader_settings(workers=workers, seed=seed, pin_memory=pin_memory))
    val = DataLoader(val_set, batch_size=val_batch_size or batch_size, shuffle=False, drop_last=False,
                     **common, **loader_settings(workers=workers, seed=seed, pin_memory=pin_memory))
    return train, val
