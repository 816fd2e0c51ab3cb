"""Batches stacked in a DataLoader worker into shared-memory buffers the worker reuses once the main process has let
go of them.

Why ours: DataLoader's default_collate stacks every batch of a worker into a new shared-memory file, and a new
file's pages cost the kernel an allocation, a zeroing and a fault each (about 3.5 ms per 32 images of 224 px, a
fifth of a worker's decode-and-augment time, on the 2-core machine of docs/performance.md); a reused buffer is only
the copy. DataLoader has no way to hand a buffer back, so a batch carries its slot: it is unpickled in the main
process (the loader thread, or the pin-memory thread) by `_received`, which attaches a finalizer to the batch's
storage that marks the slot free in the worker's small shared `flags` tensor. torch keeps one Python object per
storage for as long as anything uses it (a tensor, a view, a numpy array, a pinned copy's source in flight), so the
finalizer runs only when the last of those is gone; the worker writes only into a slot marked free. A slot whose
batch never comes back (an iterator stopped mid-epoch) stays taken; with every slot taken the worker stacks into a
new buffer, as default_collate does.

What it costs: a worker keeps the buffers it has needed at once (its prefetched batches and the one or two the
consumer holds) for as long as it lives, where default_collate's are freed as each batch is let go; persistent
validation workers keep theirs through training. `VGG16_REUSE_BATCH_BUFFERS=0` turns it off.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch

SLOTS = 8
"""Buffers per worker: the loader keeps prefetch_factor (4) batches of each worker queued, and the consumer holds
one or two more (the step's, Accelerate's one read ahead, the pin-memory thread's)."""


@dataclass
class _Pool:
    flags: torch.Tensor
    """uint8, in shared memory: 1 while the slot's batch is out (sent, not yet released by the main process)."""
    buffers: list = field(default_factory=lambda: [None] * SLOTS)


_pool: Optional[_Pool] = None
received = 0
"""Batches this process received in a worker's reused buffers (for tests and benchmarks)."""


def reuse_on() -> bool:
    return os.environ.get("VGG16_REUSE_BATCH_BUFFERS", "1") != "0"


def _worker_pool() -> _Pool:
    global _pool
    if _pool is None:  # first batch of this worker (the main process, which workers fork from, never has one)
        _pool = _Pool(torch.zeros(SLOTS, dtype=torch.uint8).share_memory_())
    return _pool


class _Sent:
    """A batch leaving a worker: pickled as its tensor, unpickled as that tensor, with the release attached."""

    def __init__(self, images: torch.Tensor, flags: torch.Tensor, slot: int):
        self.images, self.flags, self.slot = images, flags, slot

    def __reduce__(self):
        return _received, (self.images, self.flags, self.slot)


def _release(flags: torch.Tensor, slot: int) -> None:
    flags[slot] = 0


def _received(images: torch.Tensor, flags: torch.Tensor, slot: int) -> torch.Tensor:
    global received
    received += 1
    # On the storage, not the tensor: views (the NCHW permute, a slice) outlive the tensor unpickled here.
    weakref.finalize(images.untyped_storage(), _release, flags, slot).atexit = False
    return images


def _fits(buffer: Optional[torch.Tensor], shape: tuple, dtype: torch.dtype) -> bool:
    return buffer is not None and tuple(buffer.shape) == shape and buffer.dtype == dtype


def _slot_for(pool: _Pool, shape: tuple, dtype: torch.dtype) -> Optional[int]:
    """A free slot, one already holding a buffer of this shape and dtype first; None when all are out."""
    free = [s for s, out in enumerate(pool.flags.tolist()) if not out]
    same = [s for s in free if _fits(pool.buffers[s], shape, dtype)]
    return (same or free or [None])[0]


def stack_images(images: list):
    """uint8 CHW images as one (B, 3, H, W) batch laid out channels-last in memory. The JPEG decoders and torch's
    antialiased resize leave each image channels-last, so this is a copy of whole rows, where stacking them into
    the NCHW layout is a byte-by-byte transpose (docs/performance.md); the device's `engine.Normalizer` gives the
    model the layout it asks for. In a DataLoader worker the batch goes into one of the worker's reused buffers and
    is returned wrapped for the trip to the main process, where it arrives as a plain tensor."""
    rows = [image.permute(1, 2, 0) for image in images]
    if torch.utils.data.get_worker_info() is None:
        return torch.stack(rows).permute(0, 3, 1, 2)
    shape, dtype = (len(rows), *rows[0].shape), rows[0].dtype
    pool = _worker_pool() if reuse_on() else None
    slot = _slot_for(pool, shape, dtype) if pool is not None else None
    if slot is None:  # off, or every buffer out: a new one, freed as default_collate's are
        return torch.stack(rows, out=_new_shared(shape, dtype)).permute(0, 3, 1, 2)
    if not _fits(pool.buffers[slot], shape, dtype):
        pool.buffers[slot] = _new_shared(shape, dtype)
    buffer = pool.buffers[slot]
    pool.flags[slot] = 1
    torch.stack(rows, out=buffer)
    return _Sent(buffer.permute(0, 3, 1, 2), pool.flags, slot)


def _new_shared(shape: tuple, dtype: torch.dtype) -> torch.Tensor:
    """What default_collate stacks into in a worker: a tensor in a new shared-memory file."""
    storage = torch.UntypedStorage._new_shared(torch.Size(shape).numel() * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage, 0, shape)
