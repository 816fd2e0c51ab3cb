"""Decoding only the crop of a JPEG (jpeg_region.c), built on first use with the system's C compiler against its
libjpeg-turbo, and used only where its pixels are torchvision's.

Why our own C: a training crop keeps about half of a photograph, and libjpeg-turbo can skip the inverse DCT,
upsampling and colour conversion outside it and stop after its last row (docs/performance.md has the figures);
torchvision, PIL and simplejpeg do not expose that, and PyTurboJPEG needs a system library that pip cannot install.
So this is an optional speed-up with the same output: where there is no compiler, no libjpeg-turbo headers, or the
pixels of a test image differ from torchvision's decoder, `region_decoder()` is None and every file takes the
usual path. `VGG16_REGION_DECODE=0` turns it off; `region_decoder_status()` says which it is and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

import torch

SOURCE = Path(__file__).with_name("jpeg_region.c")
MARGIN = 2
"""Pixels decoded beyond the rectangle above, left and right (jpeg_region.c says why): fancy upsampling blends
each pixel's chroma with its neighbour sample's, one sample of 2x subsampling is 2 pixels, and a cropped or skipped
decode replicates its first and last samples instead. More decodes more for nothing (docs/performance.md); the
check below and tests/test_region_decode.py meet the rectangle at the worst alignment, MARGIN past the iMCU grid."""


@dataclass(frozen=True)
class RegionDecoder:
    library: ctypes.CDLL
    version: str
    rows_per_read: int
    """jpeg_region.c's rows per libjpeg read: the scratch holds that many rows of the scaled width."""

    def decode(self, data: bytes, top: int, left: int, height: int, width: int, *, scale: int,
               scaled_width: int) -> Optional[torch.Tensor]:
        """The RGB rectangle of the image decoded at 1/scale (`scaled_width` wide there) as a uint8 CHW tensor
        laid out channels-last (torchvision's own decoder returns that layout too, and torch's antialiased resize
        is fastest on it); None where libjpeg failed or warned, so that the caller decodes the file as usual."""
        data = data if isinstance(data, bytes) else bytes(data)  # ctypes passes bytes as they are
        out = torch.empty((height, width, 3), dtype=torch.uint8)
        scratch = torch.empty(scaled_width * 3 * self.rows_per_read, dtype=torch.uint8)
        status = self.library.vgg16_jpeg_region(data, len(data), scale, top, left, height, width, MARGIN,
                                                scratch.data_ptr(), scratch.numel(), out.data_ptr())
        if status == 1:
            return None
        if status:
            raise RuntimeError(f"jpeg_region: rectangle {(top, left, height, width)} outside the {scaled_width} px "
                               f"wide image at 1/{scale}")  # a bug of ours, not a bad file
        return out.permute(2, 0, 1)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vgg16"


def _build(compiler: str) -> Path:
    """The shared library for this source, compiler and machine, compiled once into the cache (atomically: eight
    processes of one node may start together)."""
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + compiler.encode() + platform.machine().encode()).hexdigest()[:16]
    error: OSError = PermissionError("no writable cache folder")
    for folder in (_cache_dir(), Path(tempfile.gettempdir()) / f"vgg16-{os.getuid()}"):
        target = folder / f"jpeg_region-{key}.so"
        if target.exists():
            return target
        try:
            folder.mkdir(parents=True, exist_ok=True)
            partial = folder / f".{target.name}.{os.getpid()}"
            # -z defs: a libjpeg without jpeg_crop_scanline (not libjpeg-turbo >= 1.5) fails here, not at a call.
            subprocess.run([compiler, "-O2", "-shared", "-fPIC", "-Werror=implicit-function-declaration",
                            "-Wl,-z,defs", str(SOURCE), "-o", str(partial), "-ljpeg"],
                           check=True, capture_output=True, timeout=120)
            os.replace(partial, target)
            return target
        except OSError as e:  # a read-only home: the temporary folder
            error = e
    raise error


def _matches_torchvision(decoder: RegionDecoder) -> bool:
    """A 4:2:0 test image decoded whole and in a rectangle equals torchvision's decode. The rectangle starts MARGIN
    pixels past a 16-pixel iMCU boundary, where libjpeg's cropped and skipped decode starts: the first rows and
    columns a library spoils there would be the rectangle's."""
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    y, x = torch.meshgrid(torch.arange(72), torch.arange(88), indexing="ij")
    picture = torch.stack([(x * 3 + y) % 256, (y * 5) % 256, ((x - y) * 7) % 256]).to(torch.uint8)
    data = encode_jpeg(picture, quality=90).numpy().tobytes()
    reference = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
    whole = decoder.decode(data, 0, 0, 72, 88, scale=1, scaled_width=88)
    top = left = 16 + MARGIN
    part = decoder.decode(data, top, left, 37, 41, scale=1, scaled_width=88)
    return (whole is not None and part is not None and torch.equal(whole, reference)
            and torch.equal(part, reference[:, top:top + 37, left:left + 41]))


@lru_cache(maxsize=None)
def _load() -> tuple:
    if os.environ.get("VGG16_REGION_DECODE", "1") == "0":
        return None, "off (VGG16_REGION_DECODE=0)"
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        return None, "off: no C compiler (cc) to build vgg16/data/jpeg_region.c"
    try:
        library = ctypes.CDLL(str(_build(compiler)))
    except subprocess.CalledProcessError as e:
        reason = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        return None, f"off: building jpeg_region.c failed ({reason[0] if reason else e}; it needs libjpeg-turbo's headers)"
    except (OSError, subprocess.TimeoutExpired) as e:
        return None, f"off: {e}"
    pointer, size, number = ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int
    library.vgg16_jpeg_region.argtypes = [ctypes.c_char_p, size, number, number, number, number, number, number,
                                          pointer, size, pointer]
    library.vgg16_jpeg_region.restype = number
    number_version = library.vgg16_jpeg_version()
    version = (f"libjpeg-turbo {number_version // 1000000}.{number_version // 1000 % 1000}.{number_version % 1000}"
               if number_version else "libjpeg-turbo")
    decoder = RegionDecoder(library, version, library.vgg16_jpeg_rows_per_read())
    if not _matches_torchvision(decoder):
        return None, f"off: the system's {version} decodes other pixels than torchvision's decoder"
    return decoder, f"on ({version})"


def region_decoder() -> Optional[RegionDecoder]:
    return _load()[0]


def region_decoder_status() -> str:
    return _load()[1]
