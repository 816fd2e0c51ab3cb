"""Files to RGB images: JPEG through torchvision's libjpeg-turbo decoder, everything else through PIL."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode (L, LA, P, CMYK, RGBA, I;16 ...) to RGB, as torchvision's default loader does."""
    if image.mode == "RGB":
        return image
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # avoids PIL's warning about palette transparency
    if image.mode.startswith("I") or image.mode == "F":
        # 16-bit greyscale (scientific PNG/TIFF) and float images: PIL's convert clips at 255, so scale instead.
        scale = 255.0 if image.mode == "F" else 1 / 257  # float images in [0, 1]; integers in the 16-bit range
        values = np.asarray(image, dtype=np.float32) * scale
        image = Image.fromarray(values.clip(0, 255).astype(np.uint8))
    return image.convert("RGB")


# What PIL raises for truncated, empty or non-image files (UnidentifiedImageError is an OSError).
BAD_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def read_bytes(raw: dict) -> bytes:
    """The encoded file of a datasets.Image value stored undecoded: its bytes, or the file at its path."""
    if raw.get("bytes"):
        return raw["bytes"]
    with open(raw["path"], "rb") as file:  # not pathlib: its path parsing cost a fiftieth of a training sample
        return file.read()


def decode_image(raw: dict):
    """An RGB image from a datasets.Image value stored undecoded ({'bytes', 'path'}), decoded in full so a bad
    file fails here (OSError).

    JPEG goes through torchvision's libjpeg-turbo decoder straight to a uint8 CHW tensor: faster per core than PIL
    (docs/performance.md), pixel-identical to it for RGB, greyscale and CMYK files. Everything else goes through PIL and `to_rgb`. The transforms accept either. (torchvision 0.29
    marks its decoders deprecated in favour of TorchCodec; they still ship and run, and a swap stays in here.)
    """
    return decode_bytes(read_bytes(raw))


def decode_bytes(data: bytes):
    """decode_image for the file's bytes."""
    if is_jpeg(data):
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError as e:  # truncated or corrupt: what PIL reports as OSError
            raise OSError(str(e).strip().splitlines()[-1]) from None
    image = Image.open(io.BytesIO(data))
    image.load()
    return to_rgb(image)


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"
