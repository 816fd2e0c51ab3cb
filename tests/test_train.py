"""train_vgg16.py end to end, through `accelerate launch`, on small data made here."""

import json

import pytest
import torch
from conftest import make_image_folder, run_cli
from safetensors.torch import load_file
from torchvision import models

SMALL = ["-a", "vgg11_bn", "--image-size", "32", "-b", "8", "--lr", "0.02", "-p", "1"]


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _results(out):
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two epochs on a 3-class folder: 24 train images, batch 8, so 3 optimizer steps per epoch."""
    base = tmp_path_factory.mktemp("run")
    data = make_image_folder(base / "data")
    out = base / "a"
    done = _ok(run_cli("--data", str(data), *SMALL, "--epochs", "2", "-j", "1", "--output-dir", str(out)))
    return data, out, done


def test_training_writes_results_weights_and_checkpoints(trained):
    data, out, done = trained
    r = _results(out)
    for key in ("arch", "dataset", "acc1", "acc5", "fps", "epochs", "steps", "global_batch_size", "num_processes",
                "mixed_precision", "device", "torch"):
        assert key in r, key
    assert (r["arch"], r["epochs"], r["steps"], r["global_batch_size"], r["num_processes"], r["val_images"]) == \
        ("vgg11_bn", 2, 6, 8, 1, 12)
    assert (r["device"], r["mixed_precision"], r["torch"]) == ("cpu", "no", torch.__version__)
    assert 0 <= r["acc1"] <= r["acc5"] <= 100 and r["fps"] > 0
    config = json.loads((out / "config.json").read_text())
    assert (config["arch"], config["num_classes"], config["head"], config["image_size"]) == ("vgg11_bn", 3, "small", 32)
    assert config["class_names"] == ["cat", "dog", "eel"]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["epoch_0001", "epoch_0002"]
    assert "Acc@1" in done.stdout.strip().splitlines()[-1]
    assert "step 3/3" in done.stdout  # progress lines with loss and lr
    assert "loss" in done.stdout and "lr" in done.stdout


def test_evaluate_reproduces_the_last_epoch(trained, tmp_path):
    data, out, _ = trained
    _ok(run_cli("--data", str(data), *SMALL, "--evaluate", "--resume", str(out / "checkpoints" / "epoch_0002"),
                "--output-dir", str(tmp_path)))
    again, first = _results(tmp_path), _results(out)
    assert (again["acc1"], again["acc5"], again["val_images"]) == (first["acc1"], first["acc5"], first["val_images"])
    assert again["steps"] == 0


def test_resume_continues_to_the_same_weights(trained, tmp_path):
    data, out, _ = trained
    done = _ok(run_cli("--data", str(data), *SMALL, "--epochs", "2", "-j", "1", "--output-dir", str(tmp_path),
                       "--resume", str(out / "checkpoints" / "epoch_0001")))
    assert "resumed from" in done.stdout and "epoch 1/2" not in done.stdout
    resumed, straight = load_file(str(tmp_path / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert resumed.keys() == straight.keys()
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)  # bitwise: order, crops, RNG all restored
    assert _results(tmp_path)["steps"] == 6


def test_stop_step_num_and_profiler(trained, tmp_path):
    data, _, _ = trained
    _ok(run_cli("--data", str(data), *SMALL, "--epochs", "5", "--stop-step-num", "4", "--prof", "-j", "0",
                "--output-dir", str(tmp_path)))
    r = _results(tmp_path)
    assert (r["steps"], r["epochs"]) == (4, 2)  # 3 steps in epoch 1, then 1 more
    trace = json.loads((tmp_path / "profile" / "profile_0.json").read_text())
    assert any("conv" in e.get("name", "") for e in trace["traceEvents"])


def test_224px_export_loads_into_torchvision_strict(tmp_path):
    _ok(run_cli("--dataset", "synthetic", "--num-classes", "5", "-a", "vgg11", "-b", "2", "--stop-step-num", "1",
                "-j", "0", "--output-dir", str(tmp_path)))
    assert json.loads((tmp_path / "config.json").read_text())["head"] == "imagenet"
    model = models.vgg11(num_classes=5)
    model.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)


def test_lr_scale_by_batch_uses_the_linear_rule(tmp_path):
    from vgg16.runner import main

    args = ["--dataset", "synthetic", "--num-classes", "3", "--image-size", "32", "-a", "vgg11", "-b", "4",
            "--grad-accum", "2", "--lr", "0.1", "--stop-step-num", "1", "-j", "0", "--output-dir", str(tmp_path)]
    assert main([*args, "--lr-scale-by-batch"]) == 0
    r = _results(tmp_path)
    assert (r["global_batch_size"], r["base_lr"], r["lr"]) == (8, 0.1, pytest.approx(0.1 * 8 / 256))
