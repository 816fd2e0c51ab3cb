"""--gpu-decode: loader workers only read JPEG files; each batch is decoded on the GPU (nvJPEG, through
torchvision's batched decode_jpeg) and cropped, resized and flipped there with the CPU path's seeded boxes and
flips: the whole batch at once (batched_crops.py) for training's and validation's standard transforms, sample by
sample with the CPU path's own transforms for the rest. For a node of fast GPUs whose CPUs cannot decode ImageNet
fast enough.

The tests run this exact path with device='cpu' (same functions, CPU decoder): the same pictures as the CPU path
(bit for bit where it goes sample by sample); nvJPEG rounds slightly differently from libjpeg. It pays where CPUs
are few per GPU: with enough cores, decoding workers are faster (docs/performance.md, measured by
`python -m vgg16.device_check`).
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from .batched_crops import BatchedCrops
from .images import read_bytes
from .pipeline import AugmentedDataset, sample_seed, seeded


class EncodedImages(Dataset):
    """The samples of an AugmentedDataset as (file bytes, label, index): no decoding in the workers."""

    def __init__(self, source: AugmentedDataset):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        self.source.set_epoch(epoch)

    def __getitem__(self, index: int):
        example = self.source.data[index % len(self.source.data)]  # past the end: a repeated copy (--ra-sampler)
        data = read_bytes(example["image"])
        return torch.frombuffer(bytearray(data), dtype=torch.uint8), example["label"], index


def collate_encoded(batch: list) -> tuple:
    """Byte strings differ in length: keep them as a list (decode_jpeg takes a list)."""
    return ([b[0] for b in batch], torch.tensor([b[1] for b in batch]), torch.tensor([b[2] for b in batch]))


class BatchDecoder:
    """(bytes list, labels, indices) from the loader -> (uint8 NCHW, labels, bad) on `device`.

    A batch that nvJPEG cannot decode as a whole (a PNG, a truncated file) is decoded sample by sample on the CPU
    instead, where an unreadable file becomes the next readable sample exactly as in the CPU path.
    """

    def __init__(self, source: AugmentedDataset, device: torch.device, batched: bool = True):
        self.source = source
        self.device = torch.device(device)
        # nvJPEG is CUDA-only, so its stream is CUDA's (see _decode); other devices decode on the CPU path's decoder
        self._stream = torch.cuda.Stream(self.device) if self.device.type == "cuda" else None
        self.batched = BatchedCrops.for_transform(source.transform) if batched else None

    def _decode(self, encoded: list) -> list:
        """nvJPEG's hardware decoder writes its outputs before the work already queued on its stream has run
        (pytorch/vision#9606, meta-pytorch/torchcodec#1634), and the caching allocator hands it blocks that queued
        kernels of the training step still read, so decoded images can overwrite a step's inputs (a nan loss, where
        CPU decoding trains). So decode on a stream of our own, where nothing
        else is queued and whose blocks are never the training stream's, and hand the images over in stream order
        (wait_stream + record_stream), without a host-side sync."""
        if self._stream is None:
            return decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        main = torch.cuda.current_stream(self.device)  # the inputs are host bytes: nothing to wait for
        with torch.cuda.stream(self._stream):
            images = decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device)
        main.wait_stream(self._stream)
        for image in images:
            image.record_stream(main)  # not reused by the decoder's stream until the step has read it
        return images

    def _transform(self, image: torch.Tensor, index: int, epoch: int) -> torch.Tensor:
        with seeded(sample_seed(self.source.seed, epoch, index)):  # crop parameters from the CPU generator
            return self.source.transform(image)

    def _transform_batch(self, images: list, indices: list, epoch: int) -> torch.Tensor:
        """The batch's crops in one roi_align per size group (batched_crops.py), or sample by sample where the
        transform is not one it does (or a validation image smaller than its crop)."""
        seeds = [sample_seed(self.source.seed, epoch, i) for i in indices]
        if self.batched is not None:
            boxes, flips = self.batched.draws([tuple(im.shape[-2:]) for im in images], seeds)
            if all(box is not None for box in boxes):
                return self.batched(images, boxes, flips)
        return torch.stack([self._transform(im, i, epoch) for im, i in zip(images, indices)])

    def __call__(self, batch: tuple) -> tuple:
        encoded, labels, indices = batch
        epoch = int(self.source._epoch[0])
        bad = torch.zeros(len(encoded), dtype=torch.int64)
        try:
            out = self._transform_batch(self._decode(encoded), indices.tolist(), epoch)
        except RuntimeError:
            out = []
            for k, i in enumerate(indices.tolist()):
                pixels, label, bad[k] = self.source[i]
                labels[k] = label
                out.append(pixels.to(self.device))
            out = torch.stack(out)
        return (out.to(self.device), labels.to(self.device, non_blocking=True),
                bad.to(self.device, non_blocking=True))

