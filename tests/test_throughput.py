"""The fast input path keeps the reference augmentation, the index scales, and the benchmark reports ratios.

Speeds are measured by `python -m vgg16.tools.benchmark`, not asserted here."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT, class_image, make_image_folder, make_photo_folder
from PIL import Image

from vgg16.data.images import decode_image
from vgg16.data.pipeline import sample_seed, seeded, train_transform
from vgg16.data.sources import load_source


def _jpeg(mode, size=(300, 200), seed=0):
    img = Image.fromarray(class_image(1, np.random.default_rng(seed), size)).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_fast_path_is_pixel_identical_to_pil(mode):
    data = _jpeg(mode)
    fast = decode_image({"bytes": data, "path": None})
    reference = torch.from_numpy(np.array(Image.open(io.BytesIO(data)).convert("RGB"))).permute(2, 0, 1)
    assert fast.dtype == torch.uint8 and torch.equal(fast, reference)


def test_truncated_jpeg_is_a_bad_image_not_a_crash():
    data = _jpeg("RGB")
    with pytest.raises(OSError):
        decode_image({"bytes": data[: len(data) // 2], "path": None})


def test_tensor_and_pil_paths_draw_the_same_crops():
    """Same seed, same RandomResizedCrop box and flip whichever decoder ran: the augmentation distribution is
    torchvision's reference one (checked via its parameters in test_data), only the decoder changed."""
    data = _jpeg("RGB", size=(500, 375))
    as_tensor = decode_image({"bytes": data, "path": None})
    as_pil = Image.open(io.BytesIO(data)).convert("RGB")
    transform = train_transform(image_size=224, small=False)
    for index in range(20):
        with seeded(sample_seed(0, 0, index)):
            a = transform(as_tensor)
        with seeded(sample_seed(0, 0, index)):
            b = transform(as_pil)
        # Different resize implementations (torch vs PIL), same box: pixels agree to a few levels on average.
        assert (a.float() - b.float()).abs().mean() < 4, index


def test_indexing_a_100k_file_imagenet_tree(tmp_path):
    root = tmp_path / "big"
    for split, per_class in (("train", 100), ("val", 5)):
        for c in range(1000):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"{i}.JPEG").touch()
    data = load_source(str(root), seed=0)  # empty files: unreadable, but indexing must not open them all
    assert (len(data.train), len(data.val), len(data.class_names)) == (100_000, 5_000, 1000)
    assert data.train.select([99_999])["label"] == [999] and data.class_names[0] == "n00000000"


def _benchmark(*args):
    done = subprocess.run([sys.executable, "-m", "vgg16.tools.benchmark", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _benchmark_lines(*args):
    done = subprocess.run([sys.executable, "-m", "vgg16.tools.benchmark", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def test_benchmark_train_prints_both_rates_and_the_ratio():
    first, r = _benchmark_lines("train", "--arch", "vgg11", "--image-size", "32", "--batch-size", "2", "4", "--steps", "3",
                                "--rounds", "1", "--channels-last")
    assert (first["batch_size"], r["batch_size"]) == (2, 4) and r["setting"] == "no + channels_last"
    assert r["images_per_s"] > 0 and r["baseline_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["images_per_s"] / r["baseline_images_per_s"])
    assert 0.8 < r["gflop_per_image"] < 1.1  # VGG11 at 32 px: 0.155 GMAC = 0.31 GFLOP forward, x3 for training


def test_benchmark_infer_times_eager_compiled_and_onnxruntime_on_the_same_batches():
    one, r = _benchmark_lines("infer", "--arch", "vgg11", "--image-size", "32", "--batch-size", "4", "--steps", "2",
                              "--rounds", "1", "--compile-backend", "eager")
    assert (one["batch_size"], r["batch_size"]) == (1, 4) and r["image_size"] == 32
    for side in ("eager", "compiled", "onnxruntime"):
        assert r[f"{side}_ms"] > 0 and r[f"{side}_images_per_s"] == pytest.approx(4000 / r[f"{side}_ms"], rel=0.02)
    assert r["onnxruntime_ratio"] == pytest.approx(r["eager_ms"] / r["onnxruntime_ms"], rel=0.02)


@pytest.mark.parametrize("split", [[], ["--eval"], ["--gpu-decode", "--device", "cpu"]])
def test_benchmark_data_against_torchvision_imagefolder(tmp_path, split):
    data = make_image_folder(tmp_path / "d", n_train=8, n_val=8) if not split[1:] else _jpeg_folder(tmp_path / "j", 8)
    r = _benchmark("data", "--data", str(data), "--batch-size", "4", "--workers", "0", "--steps", "2", "--rounds", "1",
                   *split)
    assert r["images_per_s"] > 0 and r["baseline_images_per_s"] > 0 and r["ratio"] > 0
    assert ("eval" in r["what"]) == (split == ["--eval"])
    if split[1:]:  # --gpu-decode: the decode alone and with the (batched) transforms, the same code as on a GPU
        assert r["decode_only_images_per_s"] > 0 and r["decode_and_transforms_images_per_s"] == r["images_per_s"]
        assert r["batched_transforms"] is True


def test_benchmark_stream_times_both_loaders_on_parquet_made_from_photographs(tmp_path):
    from vgg16.tools.photos import folder_to_parquet
    from vgg16.data.shards import load_parquet_source

    photos = make_photo_folder(tmp_path / "photos", n_train=12, n_val=2, size=(96, 72))
    shards = folder_to_parquet(photos, tmp_path / "photos-parquet", shards=3)
    source = load_parquet_source(str(shards))
    assert (source.train.num_rows, len(source.train.files), source.val.num_rows) == (48, 3, 8)
    r = _benchmark("stream", "--data", str(shards), "--batch-size", "4", "--workers", "0", "--steps", "2",
                   "--rounds", "1", "--shuffle-buffer", "8", "--cache-dir", str(tmp_path))
    assert r["images_per_s"] > 0 and r["baseline_images_per_s"] > 0
    assert r["arrow_copy_bytes"] >= r["parquet_bytes"] * 0.5 and r["whole_load_s"] > 0 and r["stream_first_batch_s"] > 0


def test_benchmark_errors_are_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "vgg16.tools.benchmark", "data", "--data", str(tmp_path / "nope")],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


def _jpeg_folder(root, n=4):
    rng = np.random.default_rng(3)
    for split in ("train", "val"):
        for label, name in enumerate(("a", "b")):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(class_image(label, rng, (64 + 8 * i, 48))).save(root / split / name / f"{i}.jpg")
    return root


def _decoded_batches(train, indices_batches, epoch=1, batched=True):
    """Run the --gpu-decode feed (the runner's own object: file bytes -> collate -> batch decoder) with the CPU as
    the device."""
    from vgg16.data.decoding import decoding_for
    from vgg16.data.gpu_decode import BatchDecoder

    train.set_epoch(epoch)
    decoding = decoding_for(True, "cpu")
    feed = decoding.feed(train)
    assert not decoding.loader_on_device  # nvJPEG reads host memory: Accelerate must not move the bytes
    prepare = feed.prepare if batched else BatchDecoder(train, "cpu", batched=False)
    return [prepare(decoding.collate_fn([feed.dataset[i] for i in batch])) for batch in indices_batches]


def _assert_same_pictures(images, reference, bound):
    """Each image is its reference's picture (same crop, same flip): close to it, far closer than to its mirror."""
    assert images.shape == reference.shape and images.dtype == torch.uint8
    for image, ref in zip(images.float(), reference.float()):
        difference = (image - ref).abs().mean()
        assert difference < bound and difference < (image - ref.flip(-1)).abs().mean() / 2, float(difference)


def test_gpu_decode_batched_crops_give_the_cpu_paths_pictures_of_photographs(tmp_path):
    """Training (RandomResizedCrop + flip) and validation (Resize + CenterCrop) transforms for a batch at once,
    on 200x150 photographs: the CPU path's boxes and flips, within a few levels of its antialiased resize."""
    from vgg16.data.gpu_decode import BatchDecoder
    from vgg16.data.pipeline import AugmentedDataset, eval_transform

    data = load_source(str(make_photo_folder(tmp_path / "p", n_train=4, n_val=2, size=(200, 150))), seed=0)
    for split, transform in ((data.train, train_transform(image_size=64, small=False)),
                             (data.val, eval_transform(resize_size=73, crop_size=64, interpolation="bilinear"))):
        ds = AugmentedDataset(split, transform, seed=3)
        assert BatchDecoder(ds, "cpu").batched is not None
        batch = list(range(len(ds)))
        (images, _, bad), = _decoded_batches(ds, [batch], epoch=2)
        full = []  # the CPU path's transforms on the full decode (nvJPEG decodes in full; the CPU path may not)
        for i in batch:
            with seeded(sample_seed(3, 2, i)):
                full.append(transform(decode_image(ds.data[i]["image"])))
        _assert_same_pictures(images, torch.stack(full), bound=3.0)
        assert bad.tolist() == [0] * len(batch)


def test_host_feed_is_the_dataset_itself(image_folder):
    """Without --gpu-decode the loader indexes the augmented split and its batches pass through unchanged."""
    from vgg16.data.pipeline import AugmentedDataset
    from vgg16.data.decoding import decoding_for

    train = AugmentedDataset(load_source(str(image_folder), seed=0).train, train_transform(image_size=32, small=False), 0)
    decoding = decoding_for(False, "cpu")
    feed = decoding.feed(train)
    samples = [train[0], train[1]]
    batch = decoding.collate_fn(samples)
    assert feed.dataset is train and decoding.loader_on_device
    assert all(torch.equal(a, b) for a, b in zip(feed.prepare(batch), batch))
    # The trainer's collate: default_collate's values, the images laid out channels-last (rows copied whole).
    assert all(torch.equal(a, b) for a, b in zip(batch, torch.utils.data.default_collate(samples)))
    assert batch[0].shape == (2, 3, 32, 32) and batch[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["jpeg-only", "mixed-formats", "with-a-truncated-jpeg"])
def test_gpu_decode_path_gives_the_cpu_paths_images(tmp_path, layout, monkeypatch):
    from vgg16.data.pipeline import AugmentedDataset

    root = _jpeg_folder(tmp_path / "j") if layout != "mixed-formats" else make_image_folder(tmp_path / "m")
    if layout == "with-a-truncated-jpeg":
        path = root / "train" / "a" / "1.jpg"
        path.write_bytes(path.read_bytes()[:200])
    data = load_source(str(root), seed=0)
    train = AugmentedDataset(data.train, train_transform(image_size=32, small=False), seed=5)
    batches = [[0, 1, 2], [3, 4, 5]]
    with monkeypatch.context() as m:
        if layout == "jpeg-only":  # the batched decoder must do it all: no per-sample CPU fallback
            m.setattr(AugmentedDataset, "__getitem__", lambda *a: pytest.fail("fell back to the CPU path"))
        decoded = _decoded_batches(train, batches)
        if layout == "jpeg-only":  # and sample by sample (the transforms batched_crops does not do) exactly
            per_sample = _decoded_batches(train, batches, batched=False)
    for k, ((images, labels, bad), batch) in enumerate(zip(decoded, batches)):
        reference = torch.stack([train[i][0] for i in batch])  # the CPU path, same epoch
        if layout == "mixed-formats" or (layout == "with-a-truncated-jpeg" and k == 0):
            assert torch.equal(images, reference)  # nvJPEG refused the batch: the CPU path's own samples
        else:  # one roi_align for the batch: the same boxes and flips, an area filter
            _assert_same_pictures(images, reference, bound=6.0)
        if layout == "jpeg-only":
            assert torch.equal(per_sample[k][0], reference)
        assert labels.tolist() == [train[i][1] for i in batch] and bad.tolist() == [train[i][2] for i in batch]
    if layout == "with-a-truncated-jpeg":
        assert _decoded_batches(train, [[1]])[0][2].tolist() == [1]


def test_device_check_quick_measures_or_explains_every_item(tmp_path):
    """The device check in its reduced form on this CPU: both report files, every item measured or passed, or
    skipped with the reason (no GPU here), and the correctness items run for real."""
    out = tmp_path / "check"
    done = subprocess.run([sys.executable, "-m", "vgg16.tools.device_check", "--quick", "--arch", "vgg11", "--image-size", "32",
                           "--output-dir", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((out / "device_report.json").read_text())
    assert report["complete"] and report["device"] == "cpu"
    by_name = {i["name"]: i for i in report["items"]}
    for item in report["items"]:
        assert item["status"] in ("measured", "passed", "skipped"), item
        assert item["status"] != "skipped" or item["reason"]
    assert by_name["mid-epoch resume is bit-identical"]["status"] == "passed"
    assert by_name["mid-epoch resume is bit-identical"]["val_images"] == 360
    assert "GPU" in by_name["--gpu-decode, channels_last"]["reason"]
    assert "fp16" in by_name["fp16 skipped steps counted"]["reason"]
    trainer = by_name["CPU workers, channels_last"]
    assert trainer["fps"] > 0 and trainer["val_images"] == trainer["expected_val_images"] == 20
    steps = [r for i in report["items"] if i["kind"] == "step" and i["status"] == "measured" for r in i["rows"]]
    assert {r["setting"] for r in steps} == {"bf16", "bf16 + channels_last", "no", "bf16 + channels_last + compile "
                                             "(default, aot_eager)"} and all(r["ratio"] > 0 for r in steps)
    assert report["items"][1]["name"] == "bf16 + channels_last + compile (aot_eager)"  # the first measured item
    decode = by_name["--gpu-decode: decode alone and with the transforms"]  # its plumbing, on the CPU decoder
    assert [r["way"] for r in decode["rows"]] == ["CPU decoder decode alone", "CPU decoder decode + transforms"]
    assert all(r["images_per_s"] > 0 for r in decode["rows"]) and "batched" in decode["images"]
    md = (out / "device_report.md").read_text()
    assert "| NAME | Acc@1 | FPS | Epochs | AMP_Type | Torch |" in md and "| 1p-" in md
    assert md.count("skipped") >= 3  # fp16 step, gpu decode trainer and pipeline row, fp16 check


def test_device_check_errors_are_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    done = subprocess.run([sys.executable, "-m", "vgg16.tools.device_check", "--quick", "--output-dir",
                           str(tmp_path / "a_file" / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "--output-dir" in done.stderr
