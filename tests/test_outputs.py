"""What a run leaves for people: trackers, curves, the results table, the model card, the hub push, and using
the weights (from_pretrained, predict)."""

import json
import shutil
import tempfile
from pathlib import Path

import huggingface_hub
import pytest
import torch
from conftest import make_image_folder
from PIL import Image
from safetensors.torch import save_file
from torchvision import models

import vgg16
from vgg16 import predict, report
from vgg16.data.images import decode_image
from vgg16.errors import UsageError
from vgg16.runner import main

ARGS = ["-a", "vgg11_bn", "--image-size", "32", "-b", "8", "--lr", "0.02", "-j", "0", "-p", "1"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    base = tmp_path_factory.mktemp("out")
    data = make_image_folder(base / "data")
    out = base / "run"
    assert main(["--data", str(data), *ARGS, "--epochs", "2", "--report-to", "tensorboard", "--output-dir", str(out)]) == 0
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    return data, out


def test_tensorboard_gets_config_steps_and_epochs(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = run_dir
    events = EventAccumulator(str(out / "logs" / "vgg16")).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/acc1", "val/acc5", "val/loss"} <= tags
    acc1 = [e.value for e in events.Scalars("val/acc1")]
    assert len(acc1) == 2 and acc1[-1] == pytest.approx(json.loads((out / "results.json").read_text())["acc1"])
    assert len(events.Scalars("train/loss")) == 6  # one per optimizer step at --print-freq 1


def test_curves_png_and_results_table(run_dir):
    _, out = run_dir
    with Image.open(out / "curves.png") as png:
        assert png.format == "PNG" and png.size[0] > 800 and len(png.convert("L").getcolors(maxcolors=4096) or range(4097)) > 10
    results = json.loads((out / "results.json").read_text())
    assert [h["epoch"] for h in results["history"]] == [1, 2] and results["history"][-1]["acc1"] == results["acc1"]
    table = (out / "results.md").read_text()
    assert "| NAME | Acc@1 | Acc@5 | FPS | Epochs | AMP_Type | Torch | Device |" in table
    assert f"| 1p-CPU | {results['acc1']:.3f} |" in table and "| fp32 |" in table


def test_report_merges_runs_into_the_seeds_table(run_dir, tmp_path, capsys):
    _, out = run_dir
    other = tmp_path / "gpu8"
    other.mkdir()
    r = json.loads((out / "results.json").read_text())
    r.update(num_processes=8, device="cuda", device_name="NVIDIA H100", mixed_precision="bf16", fps=9000.0)
    (other / "results.json").write_text(json.dumps(r))
    assert report.main([str(other), str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "NAME" not in line]
    assert [row.split(" | ")[0] for row in rows] == ["| 1p-CPU", "| 8p-GPU"]
    assert "| 9000.0 |" in rows[1] and "| bf16 |" in rows[1] and "NVIDIA H100" in rows[1]


def test_every_class_is_reported_in_results_the_table_the_card_and_confusion_png(run_dir, tmp_path, capsys):
    data, out = run_dir
    results = json.loads((out / "results.json").read_text())
    names = [row["class"] for row in results["per_class"]]
    assert names == ["cat", "dog", "eel"] and sum(map(sum, results["confusion"])) == results["val_images"] == 12
    assert all("macro_f1" in h and "balanced_acc" in h for h in results["history"])
    assert results["macro_f1"] == results["history"][-1]["macro_f1"]
    for page in ("results.md", "README.md"):
        text = (out / page).read_text()
        assert "## Per class" in text and f"Macro-F1 {results['macro_f1']:.3f}" in text, page
        assert all(f"| {name} | " in text for name in names), page
    with Image.open(out / "confusion.png") as png:
        assert png.format == "PNG" and png.size[0] > 300
    # --evaluate gives the same; with 3 classes top-5 is 100% by construction and is not printed as a result.
    assert main(["--data", str(data), *ARGS, "--evaluate", "--pretrained", str(out),
                 "--output-dir", str(tmp_path / "e")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"validation: acc1 {results['acc1']:.3f}  macro-F1 {results['macro_f1']:.3f}  over 12 images" in lines
    assert lines[-1].startswith(f"Acc@1 {results['acc1']:.3f}  macro-F1 {results['macro_f1']:.3f}  FPS")
    assert json.loads((tmp_path / "e" / "results.json").read_text())["confusion"] == results["confusion"]


def test_model_card_has_metrics_and_the_command(run_dir):
    _, out = run_dir
    card = (out / "README.md").read_text()
    results = json.loads((out / "results.json").read_text())
    front = card.split("---")[1]
    meta = {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in front.strip().splitlines()}
    metrics = meta["model-index"][0]["results"][0]["metrics"]
    assert metrics[0]["value"] == round(results["acc1"], 3) and metrics[1]["value"] == round(results["acc5"], 3)
    assert meta["library_name"] == "pytorch" and "image-classification" in meta["tags"]  # small head: not timm
    assert meta["license"] and meta["pipeline_tag"] == "image-classification" and "timm cannot load" in card
    assert f"- command: `{results['command']}`" in card and "--report-to tensorboard" in results["command"]
    assert "resolved: `run.yaml`" in card and (out / "run.yaml").is_file()  # the card points at the replayable run
    # The hub's own parser reads the results the hub shows (offline: ModelCard.validate needs the network).
    parsed = huggingface_hub.ModelCard.load(out / "README.md")
    found = {r.metric_type: r.metric_value for r in parsed.data.eval_results}
    assert found == {"accuracy": round(results["acc1"], 3), "top_5_accuracy": round(results["acc5"], 3),
                     "f1": round(results["macro_f1"], 3)}
    assert parsed.data.library_name == "pytorch" and parsed.data.datasets == [results["dataset"]]


def test_from_pretrained_and_predict_use_the_folder(run_dir, capsys):
    data, out = run_dir
    model = vgg16.from_pretrained(str(out))
    assert isinstance(model, torch.nn.Module) and isinstance(model, models.VGG)  # torchvision's class, keys
    assert not model.training and model.config["class_names"] == ["cat", "dog", "eel"]
    image = next((data / "val" / "dog").iterdir())
    assert predict.main(["--model", str(out), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and line.count("%") == 3  # 3 classes: the top-5 is all three
    probs = [float(part.split()[-1].rstrip("%")) for part in line.split(": ", 1)[1].split(", ")]
    assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(100, abs=0.5)


def test_predict_a_folder_in_batches_as_json_with_unreadable_files(run_dir, tmp_path, capsys):
    data, out = run_dir
    folder = tmp_path / "imgs"
    shutil.copytree(data / "val", folder)
    (folder / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    images = sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))
    assert predict.main(["--model", str(out), str(folder), "--json", "--top-k", "2", "--batch-size", "5"]) == 1
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    errors = captured.err.strip().splitlines()
    assert len(errors) == 1 and "broken.jpg" in errors[0] and errors[0].startswith("error: cannot read image")
    assert [r["image"] for r in rows] == [str(p) for p in images if p.name != "broken.jpg"]  # every other one, in order
    assert all(len(r["top"]) == 2 and r["top"][0]["probability"] >= r["top"][1]["probability"] for r in rows)
    # Batches of 5 give what one image at a time gives.
    single = predict.predict(vgg16.from_pretrained(str(out)).eval(), json.loads((out / "config.json").read_text()),
                             [decode_image({"path": rows[3]["image"]})], k=2)[0]
    assert [(n, i) for n, i, _ in single] == [(t["label"], t["index"]) for t in rows[3]["top"]]
    assert single[0][2] == pytest.approx(rows[3]["top"][0]["probability"], abs=1e-5)
    assert predict.main(["--model", str(out), str(tmp_path / "nothing-here")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_from_pretrained_reads_a_plain_torchvision_state_dict(tmp_path):
    reference = models.vgg11_bn(num_classes=4).eval()
    save_file(reference.state_dict(), str(tmp_path / "tv.safetensors"))
    model = vgg16.from_pretrained(str(tmp_path / "tv.safetensors"))
    config = model.config
    assert (config["arch"], config["num_classes"], config["head"]) == ("vgg11_bn", 4, "imagenet")
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))


def test_hub_ids_download_through_huggingface_hub(run_dir, monkeypatch):
    """The network is the one thing mocked: hf_hub_download serves files from the local run folder."""
    _, out = run_dir
    asked = []

    def fake_download(repo_id, filename, **kwargs):
        asked.append((repo_id, filename))
        return str(out / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = vgg16.from_pretrained("someone/vgg-test")
    assert asked == [("someone/vgg-test", "model.safetensors"), ("someone/vgg-test", "config.json")]
    assert model.config["arch"] == "vgg11_bn"
    monkeypatch.undo()
    with pytest.raises(UsageError, match="the hub gave no model.safetensors"):
        vgg16.from_pretrained("someone/not-cached")  # offline: one clear error


def _commit() -> "huggingface_hub.CommitInfo":
    """What HfApi.upload_folder returns for a commit."""
    return huggingface_hub.CommitInfo(commit_url="https://huggingface.co/me/vgg/commit/1", commit_message="",
                                      commit_description="", oid="1")


class RecordingHub:
    def __init__(self, fail=False):
        self.calls, self.fail = [], fail

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, **kwargs):
        if self.fail:
            raise ConnectionError("network is unreachable")
        self.calls.append(("upload_folder", kwargs))
        return _commit()


@pytest.mark.parametrize("fail", [False, True])
def test_push_to_hub_uploads_the_model_folder(run_dir, tmp_path, monkeypatch, capsys, fail):
    data, _ = run_dir
    hub = RecordingHub(fail)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    out = tmp_path / "push"
    code = main(["--data", str(data), *ARGS, "--epochs", "1", "--output-dir", str(out), "--push-to-hub",
                 "--hub-model-id", "me/vgg", "--hub-private"])
    captured = capsys.readouterr()
    for f in ("model.safetensors", "config.json", "README.md", "results.json", "results.md", "curves.png"):
        assert (out / f).exists(), f  # the local folder is complete either way
    for f in out.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            assert "hf_secret_token_value" not in f.read_text()
    assert "hf_secret_token_value" not in captured.out + captured.err
    if fail:
        assert code == 1 and "push to me/vgg failed" in captured.err and "huggingface-cli upload" in captured.err
        return
    assert code == 0
    (_, repo, create_kwargs), (_, upload) = hub.calls
    assert repo == "me/vgg" and create_kwargs["private"] is True
    assert upload["repo_id"] == "me/vgg" and upload["folder_path"] == str(out)
    uploaded = [f.name for f in out.iterdir() if f.name in upload["allow_patterns"]]
    assert sorted(uploaded) == sorted(upload["allow_patterns"])  # everything listed exists...
    assert "checkpoints" not in upload["allow_patterns"]  # ...and the training state stays home
    assert "https://huggingface.co/me/vgg/commit/1" in captured.out


class StagingRecordingHub(RecordingHub):
    """Records what each upload saw in its folder (every_save uploads a staging copy that is deleted after)."""

    def upload_folder(self, **kwargs):
        if self.fail:
            raise ConnectionError("network is unreachable (token hf_secret_token_value)")
        folder = Path(kwargs["folder_path"])
        config = json.loads((folder / "results.json").read_text())
        self.calls.append(("upload_folder", kwargs["commit_message"], config["epochs"],
                           sorted(p.name for p in folder.iterdir())))
        return _commit()


@pytest.mark.parametrize("fail", [False, True])
def test_hub_strategy_every_save_uploads_after_each_save(run_dir, tmp_path, monkeypatch, capsys, fail):
    data, _ = run_dir
    hub = StagingRecordingHub(fail)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: hub)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    out = tmp_path / "every"
    code = main(["--data", str(data), *ARGS, "--epochs", "2", "--output-dir", str(out), "--push-to-hub",
                 "--hub-model-id", "me/vgg", "--hub-strategy", "every_save"])
    captured = capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["epochs"] == 2  # a failed upload never stops training
    assert "hf_secret_token_value" not in captured.out + captured.err
    if fail:
        assert code == 1 and captured.out.count("warning: push of epoch") == 2 and "training goes on" in captured.out
        return
    assert code == 0
    uploads = [c for c in hub.calls if c[0] == "upload_folder"]
    assert [(u[1].split(":")[0], u[2]) for u in uploads[:2]] == [("epoch 1", 1), ("epoch 2", 2)]
    assert len(uploads) == 3 and uploads[2][2] == 2  # and the final push of the finished folder
    assert all(u[3] == sorted(vgg16.hub.UPLOADED) for u in uploads[:2])
    assert not list(Path(tempfile.gettempdir()).glob("vgg16-push-*"))  # staging copies removed


def test_progress_bar_in_a_terminal_and_lines_in_logs(run_dir, tmp_path, monkeypatch, capsys):
    data, _ = run_dir
    args = ["--data", str(data), *ARGS, "--epochs", "1", "--output-dir", str(tmp_path)]
    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "epoch 1/1" in captured.err and "3/3" in captured.err and "loss" in captured.err  # tqdm, on stderr
    assert "step 1/3" not in captured.out  # no log lines beside the bar
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    assert main([*args[:-1], str(tmp_path / "b")]) == 0
    assert "epoch 1/1 [torchvision]  step 1/3  loss" in capsys.readouterr().out


def test_pretrained_with_another_class_count_replaces_the_last_layer(run_dir, tmp_path, capsys):
    from safetensors.torch import load_file

    data, _ = run_dir
    source = models.vgg11(num_classes=7)  # torchvision weights for 7 classes; the data has 3
    save_file(source.state_dict(), str(tmp_path / "tv7.safetensors"))
    out = tmp_path / "ft"
    assert main(["--data", str(data), "-a", "vgg11", "--image-size", "64", "-b", "4", "--lr", "1e-9", "-j", "0",
                 "--stop-step-num", "1", "--pretrained", str(tmp_path / "tv7.safetensors"), "--output-dir", str(out)]) == 0
    assert "replaced the last layer (classifier.6: 7 classes -> 3)" in capsys.readouterr().out
    tuned = load_file(str(out / "model.safetensors"))
    assert tuned["classifier.6.weight"].shape == (3, 4096)
    torch.testing.assert_close(tuned["features.0.weight"], source.state_dict()["features.0.weight"], rtol=0, atol=1e-6)


def test_old_format_folders_still_load(run_dir, tmp_path):
    """A folder exported before config.json held the evaluation sizes and timm's fields."""
    _, out = run_dir
    old = tmp_path / "old"
    old.mkdir()
    (old / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    config = json.loads((out / "config.json").read_text())
    (old / "config.json").write_text(json.dumps({k: config[k] for k in ("arch", "num_classes", "image_size", "head",
                                                                         "class_names", "mean", "std")}))
    model = vgg16.from_pretrained(str(old))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), vgg16.from_pretrained(str(out))(x))


def _export_224(tmp_path, arch="vgg11"):
    """A 224 px export written by the trainer's own export function."""
    from accelerate import Accelerator

    from vgg16.checkpoint import export_model
    from vgg16.model import build_model

    torch.manual_seed(0)
    model = build_model(arch, 3)
    config = {"arch": arch, "num_classes": 3, "image_size": 224, "head": "imagenet", "dropout": 0.5,
              "class_names": ["cat", "dog", "eel"], "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
              "val_resize_size": 256, "val_crop_size": 224, "interpolation": "bilinear", "library": "vgg16"}
    out = tmp_path / "export224"
    out.mkdir()
    export_model(Accelerator(cpu=True), model, out, config)
    return out, model.eval()


def test_timm_loads_a_224_export_with_the_same_logits(tmp_path):
    import timm

    out, model = _export_224(tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vgg11" and config["label_names"] == ["cat", "dog", "eel"]
    assert config["pretrained_cfg"]["crop_pct"] == 0.875 and config["pretrained_cfg"]["input_size"] == [3, 224, 224]
    theirs = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    assert theirs.pretrained_cfg["mean"] == [0.485, 0.456, 0.406] and theirs.num_classes == 3
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x), vgg16.from_pretrained(str(out))(x), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(theirs(x), model(x), atol=1e-5, rtol=1e-4)


def test_the_model_saves_and_pushes_itself(tmp_path, monkeypatch):
    """save_pretrained / push_to_hub from huggingface_hub's mixin, torchvision's keys kept; the upload is the one
    thing intercepted (no network here)."""
    model = vgg16.from_pretrained(str(_export_224(tmp_path)[0]))
    model.save_pretrained(tmp_path / "again")
    again = vgg16.hub.VGGClassifier.from_pretrained(str(tmp_path / "again"))
    assert set(again.state_dict()) == set(models.vgg11(num_classes=3).state_dict())
    assert json.loads((tmp_path / "again" / "config.json").read_text())["architecture"] == "vgg11"
    uploaded = []

    def fake_upload(self, *, repo_id, folder_path, **kwargs):
        uploaded.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
        return "https://hub/commit"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo",
                        lambda self, repo_id, **k: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", fake_upload)
    model.push_to_hub("me/vgg11-test")
    assert uploaded == [("me/vgg11-test", ["README.md", "config.json", "model.safetensors"])]


def test_the_package_installs_and_its_model_loads_and_predicts_from_another_folder(run_dir, tmp_path):
    """`pip install .`, as another project installs this repository: the package with its C source and embedded
    data, importable from any folder. Built here without a build environment or dependencies (both are already
    in the test's environment) into a target folder put on the path; the README's commands need none of it."""
    import subprocess
    import sys
    import zipfile

    from conftest import ROOT

    data, out = run_dir
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)], check=True,
                   cwd=tmp_path, capture_output=True, timeout=300)
    wheel = next(wheels.glob("*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {"vgg16/data/jpeg_region.c", "vgg16/assets/digits-train.parquet", "vgg16/runner.py"} <= set(names)
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True, capture_output=True,
                   timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**__import__("os").environ, "PYTHONPATH": str(site)}
    image = next((data / "val" / "cat").iterdir())
    loaded = subprocess.run([sys.executable, "-c", f"import vgg16; print(vgg16.__file__); "
                             f"print(type(vgg16.from_pretrained({str(out)!r})).__name__)"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.splitlines() == [str(site / "vgg16" / "__init__.py"),
                                          type(vgg16.from_pretrained(str(out))).__name__]
    predicted = subprocess.run([sys.executable, "-m", "vgg16.predict", "--model", str(out), str(image)],
                               cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert predicted.returncode == 0 and predicted.stdout.startswith(f"{image}: "), predicted.stderr[-2000:]
    assert predicted.stdout == subprocess.run([sys.executable, "-m", "vgg16.predict", "--model", str(out), str(image)],
                                              cwd=ROOT, capture_output=True, text=True, timeout=300).stdout
