"""Decoding no more pixels than the first transform keeps: a JPEG whose seeded crop (training's RandomResizedCrop)
or short side (validation's Resize) is at least 2, 4 or 8 times the output size in both directions is decoded at
1/2, 1/4 or 1/8 scale inside libjpeg's inverse DCT (PIL's `Image.draft`), and the crop box drawn on the full
image is mapped into the smaller one. The box is drawn from the file's header before decoding, by the transform's
own `make_params` under the sample's seed, so the draws, and every later transform's, are the ones a full decode
would have met: augmentation stays a function of (seed, epoch, index) under resume and any worker count.

Why only 2x and more: libjpeg-turbo's power-of-two scales have SIMD paths; its other M/8 scales decode slower
than the full image. At 2x the resize that follows still only shrinks, so nothing is upsampled. Below that (500x375
ImageNet photographs cropped to 224 px never reach it) the full decode is the one it always was.
"""

from __future__ import annotations

import io
from functools import lru_cache
from typing import Optional

import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from .images import decode_bytes, is_jpeg, read_bytes, to_rgb
from .region_decode import region_decoder

SCALES = (8, 4, 2)


# Start-of-frame markers (baseline, progressive, lossless, arithmetic ...), whose segment holds the image size.
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple:
    """(height, width) from a JPEG's start-of-frame segment, without decoding. Ours because opening the file with
    PIL (the only header reader at hand) parses every table first and costs as much as a tenth of the decode; a
    file this walk does not understand goes to PIL."""
    at = 2
    while at + 9 <= len(data) and data[at] == 0xFF:
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _SOF:
            return int.from_bytes(data[at + 5:at + 7], "big"), int.from_bytes(data[at + 7:at + 9], "big")
        at += 2 + int.from_bytes(data[at + 2:at + 4], "big")
    width, height = Image.open(io.BytesIO(data)).size  # raises what a bad file raises
    return height, width


def resizes_short_side(step) -> bool:
    """A v2.Resize to one size for the short side (the output's size follows from the image's alone)."""
    return isinstance(step, v2.Resize) and len(step.size) == 1 and step.max_size is None


@lru_cache(maxsize=4096)
def size_probe(height: int, width: int) -> torch.Tensor:
    """A tensor of the image's shape holding one byte: what `make_params` needs to draw a box for that size (it
    reads the shape alone). Kept per size: making one cost a hundredth of a training sample."""
    return torch.zeros((), dtype=torch.uint8).expand(3, height, width)


def reduction(box_height: int, box_width: int, out_height: int, out_width: int) -> int:
    """The largest of 8, 4, 2 that the box is at least that many times the output in both directions, else 1."""
    return next((s for s in SCALES if box_height >= s * out_height and box_width >= s * out_width), 1)


def decode_reduced(data: bytes, factor: int) -> torch.Tensor:
    """A JPEG decoded at 1/factor scale (libjpeg rounds the size up) as an RGB uint8 CHW tensor."""
    image = Image.open(io.BytesIO(data))
    width, height = image.size
    image.draft("RGB", (width // factor, height // factor))  # floor: PIL's draft then picks exactly 1/factor
    image.load()
    return F.pil_to_tensor(to_rgb(image))


def scaled_size(height: int, width: int, factor: int) -> tuple:
    """The size libjpeg (and PIL's draft) decodes a (height, width) image to at 1/factor: rounded up."""
    return -(-height // factor), -(-width // factor)


def _scaled_box(box: dict, full: tuple, scaled: tuple) -> dict:
    """A box on the full (height, width) in the pixels of the image at the `scaled` (height, width), inside it."""
    sy, sx = scaled[0] / full[0], scaled[1] / full[1]
    top, left = min(round(box["top"] * sy), scaled[0] - 1), min(round(box["left"] * sx), scaled[1] - 1)
    return {"top": top, "left": left, "height": max(1, min(round(box["height"] * sy), scaled[0] - top)),
            "width": max(1, min(round(box["width"] * sx), scaled[1] - left))}


def _whole(image: torch.Tensor) -> dict:
    return {"top": 0, "left": 0, "height": image.shape[-2], "width": image.shape[-1]}


class SizedDecoder:
    """Decode and transform one sample, the first transform told the image's size before decoding.

    `decode(raw)` may raise what a bad file raises (the caller replaces the sample); `finish(decoded)` runs the
    transforms. Both within the sample's `seeded(...)`. A transform whose first step is not a RandomResizedCrop or
    a Resize to a short side (the small-image preset's Resize counts), or a file that is not JPEG, is decoded in
    full and transformed as it is. Where region_decode.py's decoder is built, a training crop is decoded alone
    (the same pixels as the crop of the full decode, and those of the reduced one at reduced scale).
    """

    def __init__(self, transform: v2.Compose):
        steps = list(getattr(transform, "transforms", []))
        first = steps[0] if steps else None
        sized = isinstance(first, v2.RandomResizedCrop) or resizes_short_side(first)
        self.transform = transform
        self.first: Optional[v2.Transform] = first if sized else None
        self.rest: list = steps[1:] if sized else []
        """The steps after the first, applied in order as v2.Compose would."""
        self.reduced = 0
        """Samples decoded at reduced scale by this process (or worker), for tests and benchmarks."""
        self.regions = 0
        """Samples decoded by region_decode.py's decoder (a training crop alone, or a whole image at reduced
        scale) in this process (or worker)."""
        if self.first is not None:
            region_decoder()  # built and checked here, before DataLoader workers fork, not once in each of them

    def decode(self, raw: dict) -> tuple:
        """(image, crop box or None)."""
        data = read_bytes(raw)
        if self.first is None or not is_jpeg(data):
            return decode_bytes(data), None
        height, width = jpeg_size(data)
        if isinstance(self.first, v2.RandomResizedCrop):
            box = self.first.make_params([size_probe(height, width)])
            factor = reduction(box["height"], box["width"], *self.first.size)
        else:
            box, short = None, self.first.size[0]
            factor = reduction(min(height, width), min(height, width), short, short)
        scaled = scaled_size(height, width, factor)
        if box is not None and factor > 1:
            box = _scaled_box(box, (height, width), scaled)
        # Not a whole image at full scale: that decodes no faster here than through torchvision.
        decoder = region_decoder() if box is not None or factor > 1 else None
        if decoder is not None:
            region = box or {"top": 0, "left": 0, "height": scaled[0], "width": scaled[1]}
            crop = decoder.decode(data, region["top"], region["left"], region["height"], region["width"],
                                  scale=factor, scaled_width=scaled[1])
            if crop is not None:  # else libjpeg warned or failed: the usual path reports or repairs the file
                self.regions += 1
                self.reduced += factor > 1
                return crop, (_whole(crop) if box is not None else None)
        if factor == 1:
            return decode_bytes(data), box
        self.reduced += 1
        return decode_reduced(data, factor), box

    def finish(self, decoded: tuple):
        image, box = decoded
        if self.first is None:
            return self.transform(image)
        if box is not None and box != _whole(image):
            # The crop copied into one channels-last block: torch's antialiased uint8 resize runs about twice as
            # fast on that layout (the same pixels), and a crop of a decoded image is not one.
            image = F.crop(image, **box).permute(1, 2, 0).contiguous().permute(2, 0, 1)
            box = _whole(image)
        image = self.first(image) if box is None else self.first.transform(image, box)
        for step in self.rest:
            # PILToTensor passes a tensor through unchanged, and its dispatch alone cost about a hundredth of a
            # training sample: it runs for PIL images (files that are not JPEG) only.
            if not (isinstance(step, v2.PILToTensor) and isinstance(image, torch.Tensor)):
                image = step(image)
        return image
