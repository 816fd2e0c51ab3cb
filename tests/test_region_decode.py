"""The JPEG region decoder (vgg16/data/region_decode.py): where it is built, a crop decoded alone is the crop of
the full decode, pixel for pixel, and the samples are the plain transforms' output with it and without it."""

import io

import datasets
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg

from vgg16.data import reduced, region_decode
from vgg16.data.images import decode_image
from vgg16.data.pipeline import AugmentedDataset, sample_seed, seeded, train_transform
from vgg16.data.sources import load_source
from vgg16.tools.photos import PHOTOS, make_photo_folder


@pytest.fixture(scope="module")
def decoder():
    found = region_decode.region_decoder()
    if found is None:  # no C compiler or no libjpeg-turbo headers here: the usual path is all there is
        pytest.skip(region_decode.region_decoder_status())
    return found


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return make_photo_folder(tmp_path_factory.mktemp("region") / "p", n_train=4, n_val=2, size=(160, 120),
                             photos=PHOTOS)


def _variants(photo: Image.Image) -> dict:
    """One photograph as the JPEG kinds found in the wild: each chroma subsampling, progressive, greyscale, and
    sizes off the 16-pixel grid."""
    out = {}
    for name, image, options in (("444", photo, {"subsampling": 0}), ("422", photo, {"subsampling": 1}),
                                 ("420", photo, {"subsampling": 2}),
                                 ("progressive", photo, {"progressive": True}),
                                 ("grey", photo.convert("L"), {}),
                                 ("odd size", photo.resize((157, 101)), {"subsampling": 2})):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=88, **options)
        out[name] = buffer.getvalue()
    return out


def _full(data: bytes) -> torch.Tensor:
    return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)


def test_a_region_is_the_crop_of_the_full_decode_for_every_kind_of_jpeg(decoder, photos):
    photo = Image.open(next((photos / "train").glob("*/*.jpg"))).convert("RGB")
    generator = torch.Generator().manual_seed(0)
    for name, data in _variants(photo).items():
        full = _full(data)
        height, width = full.shape[-2:]
        boxes = [(0, 0, height, width), (height - 1, width - 1, 1, 1), (0, width - 40, 40, 40)]
        # MARGIN past the iMCU grid (16 px) on each side: where a too small margin shows (a decode started on the
        # grid replicates its first chroma sample), and the bottom and right edges just inside a grid line.
        grid = 16 + region_decode.MARGIN
        boxes += [(grid, grid, 16 - 2 * region_decode.MARGIN, 16 - 2 * region_decode.MARGIN),
                  (grid, 2 * grid, 32, 31), (2 * grid, grid, 31, 32)]
        for _ in range(12):  # anywhere, off the iMCU grid
            top, left = (int(torch.randint(0, n - 8, (1,), generator=generator)) for n in (height, width))
            boxes.append((top, left, int(torch.randint(1, height - top, (1,), generator=generator)) + 1,
                          int(torch.randint(1, width - left, (1,), generator=generator)) + 1))
        for top, left, h, w in boxes:
            h, w = min(h, height - top), min(w, width - left)
            crop = decoder.decode(data, top, left, h, w, scale=1, scaled_width=width)
            assert crop.shape == (3, h, w), name
            assert torch.equal(crop, full[:, top:top + h, left:left + w]), (name, top, left, h, w)
        for factor in (2, 4):  # at reduced scale: the crop of PIL's reduced decode
            whole = reduced.decode_reduced(data, factor)
            assert whole.shape[-2:] == reduced.scaled_size(height, width, factor)
            crop = decoder.decode(data, 3, 5, whole.shape[-2] - 3, whole.shape[-1] - 9, scale=factor,
                                  scaled_width=whole.shape[-1])
            assert torch.equal(crop, whole[:, 3:, 5:-4]), (name, factor)
            top = left = 2 * (16 // factor) + region_decode.MARGIN  # past the grid of iMCUs scaled by 1/factor
            crop = decoder.decode(data, top, left, 9, 11, scale=factor, scaled_width=whole.shape[-1])
            assert torch.equal(crop, whole[:, top:top + 9, left:left + 11]), (name, factor, "on the grid")


def test_a_file_libjpeg_cannot_decode_cleanly_is_left_to_the_usual_path(decoder, photos):
    photo = Image.open(next((photos / "train").glob("*/*.jpg")))
    buffer = io.BytesIO()
    photo.convert("CMYK").save(buffer, "JPEG")
    cmyk = buffer.getvalue()
    assert decoder.decode(cmyk, 0, 0, 10, 10, scale=1, scaled_width=photo.width) is None  # no CMYK -> RGB here
    assert decode_image({"bytes": cmyk, "path": None}).shape == (3, photo.height, photo.width)  # torchvision's
    data = (photos / "train").glob("*/*.jpg").__next__().read_bytes()
    assert decoder.decode(data[:len(data) // 2], 80, 0, 30, 30, scale=1, scaled_width=photo.width) is None
    with pytest.raises(RuntimeError, match="outside"):  # a rectangle past the edge is our bug, not a bad file
        decoder.decode(data, 100, 0, 30, 30, scale=1, scaled_width=photo.width)


def test_samples_are_the_plain_transforms_output_with_the_region_decoder_and_without(decoder, photos, monkeypatch):
    """Every option that draws after the crop (flip, TrivialAugment, random erasing) sees the same pixels, so a
    run's samples do not depend on whether this machine could build the decoder. (64 px from 160x120: no crop is
    twice the output, so nothing decodes at reduced scale, whose pixels differ from the full decode's.)"""
    split = load_source(str(photos), seed=0).train
    transform = train_transform(image_size=64, small=False, auto_augment="ta_wide", random_erase=0.5)
    files = split.cast_column("image", datasets.Image(decode=False))
    plain = []
    for i in range(len(split)):
        with seeded(sample_seed(7, 0, i)):
            plain.append(transform(decode_image(files[i]["image"])))
    with_region = AugmentedDataset(split, transform, seed=7)
    assert all(torch.equal(with_region[i][0], plain[i]) for i in range(len(split)))
    assert with_region.decoder.regions == len(split)
    monkeypatch.setattr(reduced, "region_decoder", lambda: None)
    without = AugmentedDataset(split, transform, seed=7)
    assert all(torch.equal(without[i][0], plain[i]) for i in range(len(split)))
    assert without.decoder.regions == 0


def test_the_decoder_is_built_once_into_the_cache_and_is_off_without_a_working_compiler(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    try:
        region_decode._load.cache_clear()
        status = region_decode.region_decoder_status()
        if not status.startswith("on"):
            pytest.skip(status)
        assert status.startswith("on (libjpeg-turbo ") and len(list((tmp_path / "vgg16").glob("*.so"))) == 1
        monkeypatch.setenv("CC", "false")  # a compiler that fails, with nothing cached for it
        region_decode._load.cache_clear()
        assert region_decode.region_decoder() is None
        assert region_decode.region_decoder_status().startswith("off: building jpeg_region.c failed")
        monkeypatch.setenv("VGG16_REGION_DECODE", "0")
        region_decode._load.cache_clear()
        assert region_decode.region_decoder_status() == "off (VGG16_REGION_DECODE=0)"
    finally:
        monkeypatch.undo()
        region_decode._load.cache_clear()
