"""A run you can replay: the resolved options saved as OUTPUT/run.yaml, `--config` reading it back (flags beside it
win), and one line with exit 2 for a file that cannot be used. Two processes: test_distributed's rerun test; the
recipe's values for the architecture the starting weights decide: test_transfer."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vgg16.cli import read_command
from vgg16.config import TrainConfig
from vgg16.config_file import RUN_CONFIG, config_yaml
from vgg16.options import declared
from vgg16.resolve import RunFacts, config_of, resolve_config
from vgg16.runner import main

TINY = ["-a", "vgg11", "--image-size", "32", "-b", "16", "-j", "0", "--epochs", "1", "--stop-step-num", "3"]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("first")
    assert main([*TINY, "--lr", "0.02", "--output-dir", str(out)]) == 0
    return out


def test_run_yaml_holds_every_option_resolved_with_a_header(first_run):
    text = (first_run / RUN_CONFIG).read_text()
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert any(line.startswith("# command: train_vgg16.py -a vgg11") and "--lr 0.02" in line for line in header)
    assert any(line.startswith("# date: 20") for line in header)
    assert any("torch " in line and "torchvision " in line and "accelerate " in line for line in header)
    saved = yaml.safe_load(text)
    assert list(saved) == [o.key for _, o in declared(TrainConfig)]  # every option, in --help's order
    # Given, from the recipe (digits, for vgg11), and resolved from the data (32 px: no resize margin).
    assert (saved["lr"], saved["epochs"], saved["weight-decay"], saved["recipe"]) == (0.02, 1, 5e-4, "digits")
    assert (saved["image-size"], saved["val-resize-size"], saved["val-crop-size"], saved["workers"]) == (32, 32, 32, 0)
    assert saved["val-batch-size"] == 16 and saved["mixed-precision"] == "no"


def test_rerunning_from_run_yaml_gives_the_same_model_and_a_flag_beside_it_wins(first_run, tmp_path):
    again, shorter = tmp_path / "again", tmp_path / "shorter"
    assert main(["--config", str(first_run / RUN_CONFIG), "--output-dir", str(again)]) == 0
    a, b = load_file(str(first_run / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    saved_first, saved_again = (yaml.safe_load((d / RUN_CONFIG).read_text()) for d in (first_run, again))
    assert {k: v for k, v in saved_again.items() if k != "output-dir"} == \
        {k: v for k, v in saved_first.items() if k != "output-dir"}
    assert main(["--config", str(first_run / RUN_CONFIG), "--stop-step-num", "2", "--output-dir", str(shorter)]) == 0
    assert json.loads((shorter / "results.json").read_text())["steps"] == 2
    assert yaml.safe_load((shorter / RUN_CONFIG).read_text())["stop-step-num"] == 2


@pytest.mark.parametrize("text, message", [
    ("lr: 0.1\nlearning_rat: 0.1\n", "--config {path}: unknown option 'learning_rat' (did you mean lr?)"),
    ("batch-size: sixteen\n", "--config {path}: batch-size must be a whole number (got 'sixteen')"),
    ("momentum: 1.5\n", "--config {path}: momentum must be in [0, 1) (got 1.5)"),
    ("arch: vgg17\n", "--config {path}: arch: unknown value 'vgg17': use vgg11"),
    ("epochs: null\n", "--config {path}: epochs cannot be empty (null)"),
    ("lr: [0.1\n", "--config {path}: not valid YAML at line"),
    ("- lr\n- 0.1\n", "--config {path}: must hold 'option: value' lines"),
])
def test_a_config_file_that_cannot_be_used_is_one_line_and_exit_2(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["--config", str(path), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message.format(path=path) in err, err
    assert not (tmp_path / "o").exists()  # refused before anything ran


def test_a_config_file_that_cannot_be_read_is_one_line(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "missing.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: --config {tmp_path / 'missing.yaml'}: cannot read it (No such file or directory)"


def test_the_layers_apply_in_order_and_a_hand_written_file_reads_as_the_saved_one(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("recipe: torchvision\nlr: 1e-3\nbatch_size: 8\nloss-scale: dynamic\nepochs: 5\n")
    given = read_command(["--data", "x", "--config", str(path), "--epochs", "7"])
    cfg = resolve_config(given)
    # default (momentum), recipe (weight decay, schedule), file (lr as YAML 1.1 text, batch under its field
    # name), command line over file (epochs).
    assert (cfg.momentum, cfg.weight_decay, cfg.lr_scheduler) == (0.9, 1e-4, "step")
    assert (cfg.lr, cfg.batch_size, cfg.loss_scale, cfg.epochs) == (1e-3, 8, None, 7)
    saved = tmp_path / "saved.yaml"
    saved.write_text(config_yaml(cfg, "test"))
    assert resolve_config(read_command(["--config", str(saved)])) == cfg  # the saved file resolves to itself


def test_the_recipe_value_follows_the_architecture_of_the_weights_unless_arch_is_given():
    given = read_command(["--data", "x", "--recipe", "torchvision", "--pretrained", "w.safetensors"])
    assert resolve_config(given).lr == 0.01  # before the weights are looked at: the recipe's vgg16
    assert resolve_config(given, RunFacts(weights_arch="vgg11_bn")).lr == 0.1
    assert resolve_config(given, RunFacts(weights_arch="vgg11_bn")).arch == "vgg11_bn"
    assert config_of(data="x", recipe="torchvision", arch="vgg16_bn").lr == 0.1
