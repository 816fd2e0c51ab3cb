"""Transfer learning: ImageNet weights from torchvision's cache, timm's folders and hub ids, .pth files; freezing;
features with a linear probe. --freeze-epochs and --backbone-lr-scale across processes: test_distributed's 1 vs 2
process test; across SIGKILLs in the frozen epoch and after it: test_recipes' every-option test."""

import argparse
import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, cli_command, make_image_folder
from safetensors.torch import load_file, save_file
from torchvision import models

from vgg16.errors import UsageError
from vgg16.model import build_model
from vgg16.runner import main
from vgg16.weights import resolve_weights

SMALL = ["--image-size", "32", "-j", "0", "-p", "1"]
CPU = {"ACCELERATE_USE_CPU": "1"}


def _ok(done):
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def _weights(out: Path) -> dict:
    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """3 classes, 8 train / 4 val images each, 64x48 px (ImageNet-sized for the head rule at 64 px)."""
    return make_image_folder(tmp_path_factory.mktemp("d") / "imgs", size=(64, 48))


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose cache holds torchvision's VGG11 and VGG11-BN ImageNet files under torchvision's own names
    (random weights in torchvision's format: the loading path is what is tested, not the accuracy)."""
    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(3)
    state = models.vgg11().state_dict()
    torch.save(state, home / "hub" / "checkpoints" / "vgg11-8a719046.pth")
    torch.save(models.vgg11_bn().state_dict(), home / "hub" / "checkpoints" / "vgg11_bn-6002323d.pth")
    # VGG16's features-only file (torchvision's IMAGENET1K_FEATURES): only features.* is used from it.
    features = {k: v for k, v in models.vgg16().state_dict().items() if k.startswith("features.")}
    torch.save(features, home / "hub" / "checkpoints" / "vgg16_features-amdegroot-88682ab5.pth")
    return home, state


def test_bare_pretrained_trains_from_torchvisions_cached_file(data, torch_home, tmp_path, monkeypatch, capsys):
    home, state = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    out = tmp_path / "bare"
    assert main(["--data", str(data), "--pretrained", "-a", "vgg11", "-b", "4", "--lr", "0", "--stop-step-num", "1",
                 "-j", "0", "--output-dir", str(out)]) == 0
    log = capsys.readouterr().out
    assert "pretrained: loaded torchvision VGG11_Weights.IMAGENET1K_V1 (vgg11-8a719046.pth" in log
    assert "replaced the last layer (classifier.6: 1000 classes -> 3)" in log and "recipe finetune" in log
    tuned = _weights(out)
    for key, tensor in state.items():  # lr 0: every tensor but the new last layer is the file's, bit for bit
        if not key.startswith("classifier.6."):
            assert torch.equal(tuned[key], tensor), key
    assert tuned["classifier.6.weight"].shape == (3, 4096)
    config = json.loads((out / "config.json").read_text())
    assert config["pretrained"].startswith("torchvision VGG11_Weights.IMAGENET1K_V1")
    # The sizes of the weights' own transforms (no size was given); the finetune recipe freezes nothing.
    assert (config["image_size"], config["val_resize_size"], config["val_crop_size"]) == (224, 256, 224)
    assert "frozen" not in config
    assert "- started from: loaded torchvision VGG11_Weights.IMAGENET1K_V1" in (out / "README.md").read_text()


def test_a_torchvision_name_on_small_images_loads_the_features_and_starts_a_small_head(data, torch_home, tmp_path,
                                                                                          monkeypatch, capsys):
    home, state = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    out = tmp_path / "v1"
    assert main(["--data", str(data), "--pretrained", "IMAGENET1K_V1", "-a", "vgg11", *SMALL, "-b", "4", "--lr", "0",
                 "--epochs", "1", "--output-dir", str(out)]) == 0
    assert "started a new small-image head (ImageNet-sized head, small images)" in capsys.readouterr().out
    tuned = _weights(out)
    assert all(torch.equal(tuned[k], v) for k, v in state.items() if k.startswith("features."))
    assert tuned["classifier.0.weight"].shape == (512, 512)


@pytest.mark.parametrize("weights, arch, lr", [("VGG11_BN_Weights.IMAGENET1K_V1", "vgg11_bn", 0.1),
                                               ("VGG11_Weights.IMAGENET1K_V1", "vgg11", 0.01)])
def test_the_recipe_takes_its_values_for_the_architecture_the_weights_decide(data, torch_home, tmp_path, monkeypatch,
                                                                            weights, arch, lr):
    """torchvision's recipe trains the batch-norm VGGs at 0.1 and the plain ones at 0.01: the weights decide which
    before any recipe value is taken."""
    home, _ = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    out = tmp_path / arch
    assert main(["--data", str(data), "--recipe", "torchvision", "--pretrained", weights, *SMALL, "-b", "4",
                 "--stop-step-num", "1", "--epochs", "1", "--output-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    saved = yaml.safe_load((out / "run.yaml").read_text())
    assert (results["arch"], results["lr"]) == (arch, lr)
    assert (saved["arch"], saved["lr"], saved["recipe"]) == (arch, lr, "torchvision")


def test_imagenet1k_features_get_caffe_input_and_a_new_head(data, torch_home, tmp_path, monkeypatch, capsys):
    home, _ = torch_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    out = tmp_path / "caffe"
    assert main(["--data", str(data), "--pretrained", "IMAGENET1K_FEATURES", *SMALL, "-b", "4", "--stop-step-num", "1",
                 "--output-dir", str(out)]) == 0
    log = capsys.readouterr().out
    assert "its classifier is not trained (features only)" in log and "vgg16 (small head" in log
    config = json.loads((out / "config.json").read_text())
    assert config["mean"] == [0.48235, 0.45882, 0.40784] and config["std"] == pytest.approx([1 / 255] * 3)


@pytest.mark.parametrize("offline", [True, False])
def test_torchvision_weights_not_cached_are_one_line_naming_file_url_and_folder(tmp_path, monkeypatch, capsys, offline):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", offline)  # what HF_HUB_OFFLINE=1 sets

    def no_network(url, dst, *args, **kwargs):  # what urllib raises here without a network
        raise OSError(f"<urlopen error [Errno -3] Temporary failure in name resolution> ({url})")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    assert main(["--pretrained", "-a", "vgg11", "--dataset", "synthetic", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "vgg11-8a719046.pth" in err and "https://download.pytorch.org/models/vgg11-8a719046.pth" in err
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in err
    assert ("the hub is offline" in err) == offline  # offline: not even tried


@pytest.fixture(scope="module")
def timm_folder(tmp_path_factory):
    """A VGG11 saved by timm itself (timm's keys: pre_logits.fc1 as a 7x7 conv, head.fc), with its config.json."""
    timm = pytest.importorskip("timm")
    from timm.models import save_for_hf

    torch.manual_seed(5)
    model = timm.create_model("vgg11", pretrained=False, num_classes=5).eval()
    folder = tmp_path_factory.mktemp("timm") / "vgg11.tv_in1k"
    save_for_hf(model, str(folder), safe_serialization="both")  # model.safetensors and pytorch_model.bin
    return folder, model


def test_timm_weights_give_timms_logits(timm_folder):
    folder, theirs = timm_folder
    assert "pre_logits.fc1.weight" in load_file(str(folder / "model.safetensors"))  # really timm's keys
    weights = resolve_weights(str(folder), "vgg16")
    assert (weights.arch, weights.crop, weights.resize) == ("vgg11", 224, 256)
    ours = build_model("vgg11", 5).eval()
    ours.load_state_dict(weights.state, strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_a_timm_hub_id_trains_and_the_card_names_its_base_model(timm_folder, data, tmp_path, monkeypatch, capsys):
    folder, _ = timm_folder

    def from_the_hub(repo_id, filename, **kwargs):  # the network, served from the folder timm saved
        assert repo_id == "timm/vgg11.tv_in1k"
        path = folder / filename
        if not path.exists():
            raise FileNotFoundError(filename)
        return str(path)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", from_the_hub)
    out = tmp_path / "t"
    assert main(["--data", str(data), "--pretrained", "hf-hub:timm/vgg11.tv_in1k", *SMALL, "-b", "4",
                 "--epochs", "1", "--output-dir", str(out)]) == 0
    assert "vgg11 (small head" in capsys.readouterr().out  # the weights chose the arch
    card = (out / "README.md").read_text()
    assert 'base_model: "timm/vgg11.tv_in1k"' in card
    assert json.loads((out / "config.json").read_text())["base_model"] == "timm/vgg11.tv_in1k"


def test_pth_files_are_read_without_running_code(tmp_path):
    state = build_model("vgg11", 3, head="small").state_dict()
    torch.save({"model": state, "epoch": 3}, tmp_path / "reference.pth")  # as training scripts save them
    loaded = resolve_weights(str(tmp_path / "reference.pth"), "vgg16").state
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
    torch.save({"model": state, "args": argparse.Namespace(lr=0.1)}, tmp_path / "with_args.pth")
    with pytest.raises(UsageError, match="holds more than tensors"):
        resolve_weights(str(tmp_path / "with_args.pth"), "vgg16")


def test_an_arch_that_contradicts_the_weights_is_one_line(small_start, tmp_path, capsys):
    assert main(["--pretrained", str(small_start), "-a", "vgg16", "--output-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds vgg11_bn weights, but --arch is vgg16" in err


@pytest.fixture(scope="module")
def small_start(tmp_path_factory):
    """Weights of a small-head VGG11-BN, as a bare safetensors file."""
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("start") / "start.safetensors"
    model = build_model("vgg11_bn", 3, head="small")
    with torch.no_grad():  # running statistics that differ from a fresh layer's, so a moved one shows
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    save_file(model.state_dict(), str(path))
    return path


def test_freeze_features_keeps_every_feature_tensor_and_statistic(data, small_start, tmp_path):
    out = tmp_path / "frozen"
    assert main(["--data", str(data), "--pretrained", str(small_start), "--freeze-features", *SMALL, "-b", "4",
                 "--epochs", "2", "--lr", "0.05", "--output-dir", str(out)]) == 0
    start, tuned = load_file(str(small_start)), _weights(out)
    features = [k for k in start if k.startswith("features.")]
    assert any("running_mean" in k for k in features)
    assert all(torch.equal(tuned[k], start[k]) for k in features)
    assert not torch.equal(tuned["classifier.0.weight"], start["classifier.0.weight"])
    assert json.loads((out / "config.json").read_text())["frozen"] == "features.*"
    assert "- frozen: features.*" in (out / "README.md").read_text()


def test_features_under_two_processes_write_each_image_once_and_probe(data, small_start, tmp_path):
    import datasets

    out = tmp_path / "f"  # 24 train and 12 val images, batch 5 x 2 processes: padded last batches to remove
    cmd, env = cli_command(launcher=("accelerate", "launch", "--multi_gpu", "--num_processes", "2"), env=CPU)
    cmd = [*cmd[:-1], "-m", "vgg16.features", "--pretrained", str(small_start), "--data", str(data), "--layer", "fc7",
           "--image-size", "32", "-b", "5", "-j", "0", "--output", str(out), "--linear-probe"]
    done = _ok(subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600))
    for split, folder in (("train", "train"), ("validation", "val")):
        table = datasets.Dataset.from_parquet(str(out / f"{split}.parquet"))
        files = sorted(str(p) for p in (data / folder).rglob("*.*"))
        assert sorted(table["path"]) == files  # each image once
        assert len(table[0]["features"]) == 512 and table.features["label"].names == ["cat", "dog", "eel"]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["val_images"] == 12 and 0 <= result["acc1"] <= result["acc5"] <= 100


def test_pretrained_defaults_to_the_finetune_recipe():
    from vgg16.cli import parse_args

    from vgg16.cli import read_command
    from vgg16.resolve import RunFacts, resolve_config

    cfg = parse_args(["--data", "x", "--pretrained"])
    assert (cfg.recipe, cfg.freeze_epochs) == ("finetune", 0)
    assert resolve_config(read_command(["--data", "x", "--pretrained"]), RunFacts(weights_arch="vgg13")).arch == "vgg13"
    assert parse_args(["--data", "x", "--pretrained", "--freeze-features"]).freeze_epochs == 0
    assert parse_args(["--data", "x", "--pretrained", "--recipe", "torchvision"]).freeze_epochs == 0
    with pytest.raises(UsageError, match="keep one"):
        parse_args(["--pretrained", "--freeze-features", "--freeze-epochs", "2"])
