"""--gpu-decode's transforms for a whole batch at once: training's RandomResizedCrop + flip, or validation's
Resize + CenterCrop, as one `torchvision.ops.roi_align` per group of similar-sized images instead of a crop, a
resize and a flip per sample from Python.

The boxes and flips are the CPU path's: each sample's are drawn on the CPU under its seed by the transforms' own
`make_params` and forward (on a probe of the image's size), so the draws are the ones `AugmentedDataset` makes.
The pixels are not bit-identical to the CPU path's antialiased resize: roi_align averages ceil(box / output)^2
bilinear samples per output pixel (`sampling_ratio=-1`), an area filter where the resize uses a triangle one.
Transforms beyond these (auto-augment, erasing, the small-image preset) go sample by sample instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torchvision.ops import roi_align
from torchvision.transforms import v2
from torchvision.transforms.v2.functional._geometry import _compute_resized_output_size

from .pipeline import seeded
from .reduced import resizes_short_side, size_probe

# Pixels (over the 3 channels, in float32) one roi_align may pad its group of images to: 1 GiB.
GROUP_PIXELS = 2**28 // 3


_FLIP_PROBE = torch.tensor([[[0, 1]]], dtype=torch.uint8)


class BatchedCrops:
    """Boxes (x1, y1, x2, y2 on the decoded image), flips and output size for a batch, then the crops."""

    def __init__(self, first: v2.Transform, second: Optional[v2.Transform]):
        self.first, self.second = first, second
        size = first.size if isinstance(first, v2.RandomResizedCrop) else second.size
        self.out = (size[0], size[-1])

    @classmethod
    def for_transform(cls, transform) -> Optional["BatchedCrops"]:
        """For [RandomResizedCrop, RandomHorizontalFlip?, PILToTensor] or [Resize(short side), CenterCrop,
        PILToTensor]; None for anything else."""
        steps = [s for s in getattr(transform, "transforms", []) if not isinstance(s, v2.PILToTensor)]
        if not steps:
            return None
        if isinstance(steps[0], v2.RandomResizedCrop) and (
                len(steps) == 1 or (len(steps) == 2 and isinstance(steps[1], v2.RandomHorizontalFlip))):
            return cls(steps[0], steps[1] if len(steps) == 2 else None)
        if len(steps) == 2 and resizes_short_side(steps[0]) and isinstance(steps[1], v2.CenterCrop):
            return cls(steps[0], steps[1])
        return None

    def draw(self, height: int, width: int) -> tuple:
        """((x1, y1, x2, y2), flip) for one image, under the caller's `seeded(...)`."""
        if isinstance(self.first, v2.RandomResizedCrop):
            p = self.first.make_params([size_probe(height, width)])
            flip = self.second is not None and bool(self.second(_FLIP_PROBE)[0, 0, 0] == 1)
            return (p["left"], p["top"], p["left"] + p["width"], p["top"] + p["height"]), flip
        new_h, new_w = _compute_resized_output_size((height, width), self.first.size)
        crop_h, crop_w = self.out
        if crop_h > new_h or crop_w > new_w:
            return None, False  # CenterCrop would pad: the sample goes the per-sample way
        top, left = int(round((new_h - crop_h) / 2.0)), int(round((new_w - crop_w) / 2.0))
        sy, sx = height / new_h, width / new_w
        return (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy), False

    def draws(self, sizes: Sequence[tuple], seeds: Sequence[int]) -> tuple:
        boxes, flips = [], []
        for (height, width), seed in zip(sizes, seeds):
            with seeded(seed):
                box, flip = self.draw(height, width)
            boxes.append(box)
            flips.append(flip)
        return boxes, flips

    def __call__(self, images: Sequence[torch.Tensor], boxes: Sequence[tuple], flips: Sequence[bool]) -> torch.Tensor:
        """uint8 (N, 3, out_h, out_w) on the images' device: roi_align per group of images sorted by size, so
        padding each group to its largest image stays within GROUP_PIXELS."""
        device = images[0].device
        out = torch.empty((len(images), 3, *self.out), dtype=torch.uint8, device=device)
        order = sorted(range(len(images)), key=lambda k: images[k].shape[-2] * images[k].shape[-1])
        start = 0
        while start < len(order):
            (h, w), end = images[order[start]].shape[-2:], start + 1
            while end < len(order):  # grow the group while its padded size stays within GROUP_PIXELS
                grown_h, grown_w = max(h, images[order[end]].shape[-2]), max(w, images[order[end]].shape[-1])
                if grown_h * grown_w * (end + 1 - start) > GROUP_PIXELS:
                    break
                h, w, end = grown_h, grown_w, end + 1
            group = order[start:end]
            padded = torch.zeros((len(group), 3, h, w), dtype=torch.float32, device=device)
            for row, k in enumerate(group):
                ih, iw = images[k].shape[-2:]
                padded[row, :, :ih, :iw] = images[k]
                # roi_align clamps its bilinear samples to the padded tensor's edge, and the last half pixel of a
                # box reaches past the image: one replicated row and column give it the image's edge, not zeros.
                padded[row, :, :ih, iw:iw + 1] = images[k][:, :, -1:]
                padded[row, :, ih:ih + 1, :iw + 1] = padded[row, :, ih - 1:ih, :iw + 1]
            rois = torch.tensor([[row, *boxes[k]] for row, k in enumerate(group)], dtype=torch.float32, device=device)
            crops = roi_align(padded, rois, self.out, spatial_scale=1.0, sampling_ratio=-1, aligned=True)
            flip = torch.tensor([flips[k] for k in group], device=device).view(-1, 1, 1, 1)
            crops = torch.where(flip, crops.flip(-1), crops)
            out[torch.tensor(group, device=device)] = crops.round_().clamp_(0, 255).to(torch.uint8)
            start = end
        return out
