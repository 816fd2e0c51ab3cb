"""--streaming: parquet shards read as a stream, an equal and distinct span per process, resumable exactly.

The shards are written by `datasets` as the hub's are (conftest.make_parquet_shards): 7 train files of unequal
size (120 rows in 27 row groups), 2 validation files (23 rows); every image holds its row id in its first pixel.
"""

import json
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, cli_command, make_parquet_shards
from safetensors.torch import load_file
from torchvision.transforms import v2

from vgg16.errors import RunFailure
from vgg16.runner import main
from vgg16.data.shards import load_parquet_source
from vgg16.data.streaming import (PAD, EpochOrder, ParquetStream, StreamPlan, buffer_shuffle, stream_loader,
                             train_batches, val_batches)

TINY = ["-a", "vgg11", "--image-size", "32", "--lr", "0.02", "-p", "1", "--streaming"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_parquet_shards(tmp_path_factory.mktemp("pq") / "hub-layout")


@pytest.fixture(scope="module")
def source(shards):
    return load_parquet_source(str(shards))


def test_the_files_footers_give_rows_row_groups_and_classes_without_reading_images(source):
    assert source.train.num_rows == 120 and source.val.num_rows == 23
    assert len(source.train.files) == 7 and len(source.train.piece_rows) == 27  # groups of 5: 3+4+2+7+4+2+5
    assert source.train.class_names == ("cat", "dog", "eel") and source.train.image_column == "image"


@pytest.mark.parametrize("processes", [1, 2, 3, 8])
def test_each_epoch_gives_every_process_the_same_number_of_batches_of_distinct_rows(source, processes):
    batch = 4
    n = train_batches(source.train.num_rows, num_processes=processes, batch_size=batch)
    assert n == 120 // processes // batch
    orders = []
    for epoch in (0, 1):
        read = []
        for rank in range(processes):
            plan = StreamPlan(processes, rank, batch, n, streams=3, shuffle_buffer=12, seed=5, train=True)
            order = EpochOrder(source.train, plan, epoch)
            batches = [order.batch(k).tolist() for k in range(n)]
            assert all(len(b) == batch for b in batches)  # equal steps everywhere: nobody waits at a collective
            read += [row for b in batches for row in b]
        assert len(read) == len(set(read)) == processes * n * batch  # each row at most once, none lost but the cut
        assert set(read) <= set(range(120))
        orders.append(read)
    assert orders[0] != orders[1]  # a new order every epoch


@pytest.mark.parametrize("processes", [1, 2, 3, 4])
def test_validation_spans_cover_every_row_once_in_padded_batches_of_equal_count(source, processes):
    n = val_batches(23, num_processes=processes, batch_size=4)
    rows = []
    for rank in range(processes):
        plan = StreamPlan(processes, rank, 4, n, streams=2, shuffle_buffer=0, seed=0, train=False)
        order = EpochOrder(source.val, plan, epoch=3)
        rows += [row for k in range(n) for row in order.batch(k).tolist()]
    assert sorted(rows) == list(range(23))


def test_a_shuffle_buffer_permutes_and_holds_an_item_back_at_most_its_size(source):
    items = np.arange(1000)
    out = buffer_shuffle(items, 50, np.random.default_rng(0))
    assert sorted(out.tolist()) == items.tolist() and not np.array_equal(out, items)
    position = np.empty_like(out)
    position[out] = np.arange(len(out))
    assert (position >= items - 50).all()  # an item enters the buffer 50 places before it can leave
    assert np.array_equal(buffer_shuffle(items, 1, np.random.default_rng(0)), items)


def _read_all(split, plan, workers, start=0, epoch=1):
    stream = ParquetStream(split, v2.PILToTensor(), plan)  # no crop: the first pixel still names the row
    stream.set_epoch(epoch, start)
    return list(stream_loader(stream, workers=workers, seed=0, pin_memory=False))


@pytest.mark.parametrize("workers, start", [(0, 0), (2, 0), (2, 5), (3, 7)])
def test_the_loader_yields_the_planned_batches_in_order_for_any_worker_count_and_start(source, workers, start):
    plan = StreamPlan(2, 1, 4, train_batches(120, num_processes=2, batch_size=4), streams=2, shuffle_buffer=8,
                      seed=1, train=True)
    batches = _read_all(source.train, plan, workers, start)
    order = EpochOrder(source.train, plan, 1)
    assert [b[3].tolist() for b in batches] == [order.batch(k).tolist() for k in range(start, plan.num_batches)]
    for images, _, bad, rows in batches:
        assert (bad == 0).all()
        assert (images[:, 0, 0, 0].long() * 256 + images[:, 1, 0, 0].long()).tolist() == rows.tolist()


def test_an_unreadable_image_is_replaced_within_its_batch_counted_and_named_once(tmp_path, capsys):
    root = make_parquet_shards(tmp_path / "bad", train_rows=(10, 10), val_rows=(5,), group_rows=5)
    path = root / "data" / "train-00001-of-00002.parquet"
    table = pq.read_table(path)
    images = table.column("image").to_pylist()
    images[2] = {"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}  # row 12 of the split
    pq.write_table(table.set_column(0, "image", pa.array(images, type=table.schema.field("image").type))
                   .replace_schema_metadata(table.schema.metadata), path, row_group_size=5)
    split = load_parquet_source(str(root)).train
    plan = StreamPlan(1, 0, 5, 4, streams=1, shuffle_buffer=0, seed=0, train=True)
    batches = _read_all(split, plan, workers=0)
    bad = torch.cat([b[2] for b in batches])
    rows = torch.cat([b[3] for b in batches])
    assert bad.sum() == 1 and rows[bad == 1].tolist() == [12]
    assert "skipping unreadable image" in capsys.readouterr().err
    stream = ParquetStream(split, v2.PILToTensor(), plan, strict=True)
    with pytest.raises(RunFailure, match="train-00001-of-00002.parquet row 2"):
        list(stream_loader(stream, workers=0, seed=0, pin_memory=False))


def test_a_shard_that_cannot_be_read_mid_run_is_one_line_naming_it(tmp_path):
    root = make_parquet_shards(tmp_path / "damaged", train_rows=(10, 10), val_rows=(5,), group_rows=5)
    split = load_parquet_source(str(root)).train  # footers read: then the file loses its data pages
    path = root / "data" / "train-00000-of-00002.parquet"
    data = path.read_bytes()
    path.write_bytes(b"\0" * (len(data) - 2000) + data[-2000:])
    plan = StreamPlan(1, 0, 5, 4, streams=1, shuffle_buffer=0, seed=0, train=True)
    with pytest.raises(RunFailure, match=r"could not read row group \d of .*train-00000-of-00002.parquet"):
        _read_all(split, plan, workers=0, epoch=0)


def _same_weights(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_stopped_stream_resumes_to_the_same_weights_with_another_worker_count(shards, tmp_path, capsys):
    args = ["--data", str(shards), *TINY, "-b", "8", "--epochs", "2", "--shuffle-buffer", "20", "--deterministic"]
    reference, stopped = tmp_path / "reference", tmp_path / "stopped"
    assert main([*args, "-j", "2", "--output-dir", str(reference)]) == 0
    first = json.loads((reference / "results.json").read_text())
    assert first["steps"] == 2 * 15 and first["val_images"] == 23 and first["train_images"] == 120
    # Stopped at step 7 (batch 7 of 15: not a multiple of the 2 workers), resumed with none.
    assert main([*args, "-j", "2", "--output-dir", str(stopped), "--stop-step-num", "7"]) == 0
    capsys.readouterr()
    assert main([*args, "-j", "0", "--output-dir", str(stopped), "--resume", "auto"]) == 0
    assert "epoch 1, step 7 of 15" in capsys.readouterr().out
    assert _same_weights(stopped, reference)


def _probe(shards, out, processes, workers):
    script = ROOT / "tests" / "stream_probe.py"
    cmd, env = cli_command(launcher=("accelerate", "launch", "--multi_gpu", "--num_processes", str(processes)))
    cmd = [*cmd[:-1], str(script), str(shards), str(out), "4", str(workers)]  # the probe instead of train_vgg16.py
    done = subprocess.run(cmd, env={**env, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(ROOT)}, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.parametrize("processes, workers", [(2, 2), (3, 0)])
def test_processes_over_gloo_read_each_row_once_take_equal_steps_count_validation_once_and_resume(
        shards, tmp_path, processes, workers):
    found = _probe(shards, tmp_path / "probe.json", processes, workers)
    records = sorted(found["records"], key=lambda r: r["rank"])
    batches = 120 // processes // 4
    for epoch in (0, 1):
        read = [row for r in records for b in r["epochs"][epoch] for row in b]
        assert len(read) == len(set(read)) == processes * batches * 4  # 7 shards: no process count divides them
        assert all(len(r["epochs"][epoch]) == r["len"] == batches for r in records)
    for r in records:
        assert r["resumed"] == r["epochs"][1][3:]  # a resumed stream continues where it stopped
        assert r["val_count"] == 23  # the trainer's evaluate, every image once
    val = [row for r in records for row in r["val"] if row != PAD]
    assert sorted(val) == list(range(23))


@pytest.mark.parametrize("args, message", [
    (["--streaming"], "--streaming reads parquet files: give --data"),
    (["--streaming", "--data", "someone/imagenet-like"], "could not list its files"),
    (["--streaming", "--gpu-decode", "--data", "x"], "--gpu-decode is not available with --streaming"),
    (["--streaming", "--data", "./no/such/shards"], "no such file or directory"),
])
def test_streaming_mistakes_are_one_line(args, message, capsys, tmp_path):
    assert main([*args, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_folder_of_images_is_not_a_stream_and_says_so(tmp_path, capsys):
    from conftest import make_image_folder

    folder = make_image_folder(tmp_path / "imgs", n_train=2, n_val=1)
    assert main(["--data", str(folder), "--streaming", "--output-dir", str(tmp_path / "o")]) == 2
    assert "--streaming reads parquet files" in capsys.readouterr().err


def test_a_stream_of_large_jpegs_decodes_at_reduced_scale_and_gives_the_map_style_images(tmp_path):
    """400x300 JPEGs in parquet, cropped to 64 px: the stream decodes most at reduced scale and each row's image is
    the one the map-style path makes for that index (the same seed, the same header-drawn box)."""
    from pathlib import Path

    from vgg16.data.pipeline import AugmentedDataset, train_transform
    from vgg16.data.sources import load_parquet_folder
    from vgg16.tools.photos import folder_to_parquet, make_photo_folder

    photos = make_photo_folder(tmp_path / "photos", n_train=4, n_val=1, size=(400, 300))
    shards = folder_to_parquet(photos, tmp_path / "pq", shards=2)
    split = load_parquet_source(str(shards)).train
    transform = train_transform(image_size=64, small=False)
    plan = StreamPlan(1, 0, 4, train_batches(split.num_rows, num_processes=1, batch_size=4), streams=1,
                      shuffle_buffer=0, seed=3, train=True)
    stream = ParquetStream(split, transform, plan, image_shape=(3, 64, 64))
    stream.set_epoch(2)
    batches = list(stream_loader(stream, workers=0, seed=0, pin_memory=False))
    assert stream.decoder.reduced > 0
    whole = AugmentedDataset(load_parquet_folder(Path(shards), seed=0).train, transform, seed=3)
    whole.set_epoch(2)
    for images, _, bad, rows in batches:
        assert (bad == 0).all()
        for image, row in zip(images, rows.tolist()):
            assert torch.equal(image, whole[row][0]), row
