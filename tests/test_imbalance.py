"""Every class seen: imbalanced data said and handled (--class-weights, --sampler balanced), the best epoch kept
(--best-metric), and ImageNet's validation labels as image-net.org and Kaggle ship them. The per-class figures under
1, 2 and 3 processes: test_distributed; in results.json, results.md and the card: test_outputs; --sampler balanced
with 2 processes: test_distributed; across a SIGKILL: here."""

import io
import json
import shutil
import tarfile

import numpy as np
import pytest
import torch
from conftest import kill_when, make_image_folder, run_cli
from safetensors.torch import load_file

from vgg16.data.balance import BalancedBatches, balanced_weights, imbalance_note, read_class_weights
from vgg16.data.sources import load_source
from vgg16.errors import UsageError
from vgg16.runner import main

TINY = ["-a", "vgg11", "--image-size", "32", "-j", "0", "-p", "1", "--lr", "0.05"]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory):
    """cat 12, dog 4, eel 2 training images (6x), 4 validation images each."""
    root = make_image_folder(tmp_path_factory.mktemp("skew") / "imgs", n_train=12, n_val=4)
    for name, keep in (("dog", 4), ("eel", 2)):
        for extra in sorted((root / "train" / name).iterdir())[keep:]:
            extra.unlink()
    return root


def test_balanced_stream_draws_every_class_equally_the_same_for_any_process_count():
    labels = [0] * 50 + [1] * 9 + [2] * 3 + [3] * 1
    one = BalancedBatches(labels, batch_size=8, num_processes=1, seed=3)
    two = BalancedBatches(labels, batch_size=4, num_processes=2, seed=3)
    for epoch in (0, 1):
        one.set_epoch(epoch)
        two.set_epoch(epoch)
        stream = one.order()
        assert stream == two.order() and len(stream) == 56  # 63 draws cut to 7 global batches of 8
        whole = BalancedBatches(labels, batch_size=63, num_processes=1, seed=3)
        whole.set_epoch(epoch)
        counts = np.bincount([labels[i % 63] for i in whole.order()], minlength=4)
        assert counts.max() - counts.min() <= 1 and counts.sum() == 63  # equal within one draw per class
        assert len(set(whole.order())) == 63  # a repeated image is a numbered copy: its own augmentation seed
    one.set_epoch(0)
    first = one.order()
    one.set_epoch(1)
    assert one.order() != first  # a new draw every epoch
    # Two processes: Accelerate gives rank r batches r, r + 2, ...; together they are the one-process batches.
    one_batches, two_batches = list(one), list(two)
    assert len(two_batches) == 2 * len(one_batches) == 14
    assert all(two_batches[2 * k] + two_batches[2 * k + 1] == one_batches[k] for k in range(7))


def test_class_weights_are_scikit_learns_balanced_or_a_file(tmp_path):
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.array([0] * 12 + [1] * 4 + [2] * 2)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert balanced_weights(np.bincount(labels)) == pytest.approx(expected)
    names = ["cat", "dog", "eel"]
    (tmp_path / "w.yaml").write_text("dog: 2\neel: 4.5\n")
    assert read_class_weights(str(tmp_path / "w.yaml"), names).tolist() == [1.0, 2.0, 4.5]
    (tmp_path / "w.txt").write_text("1\n2\n3\n")
    assert read_class_weights(str(tmp_path / "w.txt"), names).tolist() == [1.0, 2.0, 3.0]
    for text, message in (("cow: 2\n", "no class named 'cow'"), ("1\n2\n", "2 weights for 3 classes"),
                          ("dog: -1\n", "at least 0")):
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(UsageError, match=message):
            read_class_weights(str(tmp_path / "bad.yaml"), names)
    note = imbalance_note(np.array([12, 4, 2]), names)
    assert "class cat has 12 images, class eel 2 (6.0x)" in note and "--sampler balanced" in note
    assert imbalance_note(np.array([10, 4, 2]), names) is None  # 5x: not said


def test_imbalance_is_said_and_both_options_train_and_are_recorded(skewed, tmp_path, capsys):
    weighted, balanced = tmp_path / "weighted", tmp_path / "balanced"
    assert main(["--data", str(skewed), *TINY, "-b", "6", "--epochs", "1", "--class-weights", "balanced",
                 "--output-dir", str(weighted)]) == 0
    out = capsys.readouterr().out
    assert "note: imbalanced training data: class cat has 12 images, class eel 2 (6.0x)" in out
    assert "--class-weights balanced: class weights from 0.5 (cat) to 3 (eel)" in out
    assert main(["--data", str(skewed), *TINY, "-b", "6", "--epochs", "1", "--sampler", "balanced",
                 "--output-dir", str(balanced)]) == 0
    assert json.loads((balanced / "results.json").read_text())["steps"] == 3  # 18 draws, batch 6
    import yaml

    assert yaml.safe_load((weighted / "run.yaml").read_text())["class-weights"] == "balanced"
    assert yaml.safe_load((balanced / "run.yaml").read_text())["sampler"] == "balanced"
    assert "- class weights in the loss: balanced" in (weighted / "README.md").read_text()
    assert "- sampler: balanced (each class drawn equally often)" in (balanced / "README.md").read_text()
    for args, message in ((["--sampler", "balanced", "--ra-sampler"], "keep one"),
                          (["--epoch-size", "9"], "--epoch-size is for --sampler balanced"),
                          (["--class-weights", str(tmp_path / "none.yaml")], "cannot read it")):
        assert main(["--data", str(skewed), *TINY, "-b", "6", *args, "--output-dir", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err


def test_a_balanced_stream_killed_mid_epoch_resumes_bit_identical(skewed, tmp_path):
    args = ["--data", str(skewed), *TINY, "-b", "4", "--epochs", "2", "--sampler", "balanced", "--epoch-size", "24",
            "--checkpoint-every", "2"]
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_cli(*args, "--output-dir", str(reference), launcher=()).returncode == 0
    kill_when(killed / "checkpoints" / "step_000000008", *args, "--output-dir", str(killed))  # mid-epoch 2
    done = run_cli(*args, "--output-dir", str(killed), "--resume", "auto", launcher=())
    assert done.returncode == 0 and "resumed from" in done.stdout, done.stderr[-2000:]
    a, b = load_file(str(reference / "model.safetensors")), load_file(str(killed / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_best_metric_exports_the_best_epoch_keeps_the_last_and_survives_a_resume(skewed, tmp_path):
    args = ["--data", str(skewed), *TINY, "--lr", "0.2", "-b", "6", "--epochs", "3", "--best-metric", "val_loss",
            "--keep-checkpoints", "3"]
    whole, parted = tmp_path / "whole", tmp_path / "parted"
    assert main([*args, "--output-dir", str(whole)]) == 0
    r = json.loads((whole / "results.json").read_text())
    losses = [h["val_loss"] for h in r["history"]]
    best = int(np.argmin(losses)) + 1
    assert r["best"]["epoch"] == best and r["best"]["metric"] == "val_loss" and r["best"]["val_loss"] == min(losses)
    exported, last = load_file(str(whole / "model.safetensors")), load_file(str(whole / "last" / "model.safetensors"))
    at_best = load_file(str(whole / "checkpoints" / f"epoch_{best:04d}" / "model.safetensors"))
    at_end = load_file(str(whole / "checkpoints" / "epoch_0003" / "model.safetensors"))
    assert all(torch.equal(exported[k], at_best[k]) for k in at_best)
    assert all(torch.equal(last[k], at_end[k]) for k in at_end)
    card = (whole / "README.md").read_text()
    assert f"Weights: epoch {best}'s of 3, the best by val loss" in card
    # Stopped after epoch 1 and resumed: the best so far is kept, and the end is the same.
    assert main([*args, "--stop-step-num", "3", "--output-dir", str(parted)]) == 0
    assert main([*args, "--resume", "auto", "--output-dir", str(parted)]) == 0
    again = json.loads((parted / "results.json").read_text())
    assert again["best"] == r["best"]
    resumed = load_file(str(parted / "model.safetensors"))
    assert all(torch.equal(resumed[k], exported[k]) for k in exported)


def _devkit(root, wnids_by_id: dict, truth: list) -> None:
    """A devkit in image-net.org's layout: data/meta.mat (synsets) and the validation ground truth."""
    import scipy.io

    synsets = np.array([(i, w, f"class {w}", "", 0) for i, w in wnids_by_id.items()],
                       dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("gloss", "O"),
                              ("num_children", "O")])
    mat = io.BytesIO()
    scipy.io.savemat(mat, {"synsets": synsets})
    with tarfile.open(root / "ILSVRC2012_devkit_t12.tar.gz", "w:gz") as tar:
        for name, data in (("data/meta.mat", mat.getvalue()),
                           ("data/ILSVRC2012_validation_ground_truth.txt", "\n".join(map(str, truth)).encode())):
            info = tarfile.TarInfo(f"ILSVRC2012_devkit_t12/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("labels_file", ["devkit", "kaggle", None])
def test_imagenets_flat_validation_folder_reads_its_labels_where_they_are_shipped(tmp_path, labels_file, capsys):
    root = make_image_folder(tmp_path / "imagenet", classes=("n01440764", "n01443537"), n_train=2, n_val=3)
    flat, truth = root / "val", []
    for i, path in enumerate(sorted(flat.rglob("*.*"))):  # into one folder, named as image-net.org names them
        truth.append(path.parent.name)
        shutil.move(path, flat / f"ILSVRC2012_val_{i + 1:08d}{path.suffix}")
    for folder in ("n01440764", "n01443537"):
        (flat / folder).rmdir()
    if labels_file == "devkit":
        _devkit(root, {7: "n01443537", 3: "n01440764"}, [{"n01440764": 3, "n01443537": 7}[w] for w in truth])
    elif labels_file == "kaggle":
        rows = [f"ILSVRC2012_val_{i + 1:08d},{w} 1 2 30 40 {w} 5 6 7 8\n" for i, w in enumerate(truth)]
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(reversed(rows)))
    if labels_file is None:
        with pytest.raises(UsageError, match=r"holds 6 images and no class folders: ImageNet's validation split as "
                                             r"image-net.org ships it. Put ILSVRC2012_devkit_t12.tar.gz"):
            load_source(str(root), seed=0)
        return
    data = load_source(str(root), seed=0)
    names = data.class_names
    assert [names[label] for label in data.val["label"]] == truth and len(list(flat.iterdir())) == 6  # none moved
    assert any("validation labels of the flat" in note for note in data.notes)
