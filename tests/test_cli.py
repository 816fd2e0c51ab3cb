import argparse
import dataclasses
import glob

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType
from conftest import ROOT, run_cli

from vgg16.cli import parse_args, read_command
from vgg16.config import RECIPES, SIZE_OPTIONS, TrainConfig
from vgg16.errors import UsageError
from vgg16.resolve import config_of
from vgg16.runner import main


def test_old_spellings_are_aliases():
    cfg = parse_args(["--data_path", "/x", "--a", "vgg19", "--learning-rate", "0.2", "--mom", "0.8",
                      "--weight-decay", "0.001", "--epoch", "3", "-b", "16", "-j", "3", "-p", "7", "--seed", "1"])
    assert (cfg.data, cfg.arch, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs, cfg.batch_size, cfg.workers,
            cfg.print_freq, cfg.seed) == ("/x", "vgg19", 0.2, 0.8, 0.001, 3, 16, 3, 7, 1)


def test_recipe_defaults_depend_on_the_data():
    imagenet = parse_args(["--data", "/x"])
    assert (imagenet.arch, imagenet.lr, imagenet.epochs, imagenet.weight_decay, imagenet.batch_size,
            imagenet.lr_scheduler, imagenet.seed) == ("vgg16", 0.01, 90, 1e-4, 32, "step", 49)
    digits = parse_args([])
    assert all(getattr(digits, k) == v for k, v in RECIPES["digits"].values.items() if k not in SIZE_OPTIONS)
    assert parse_args(["--lr", "0.3"]).lr == 0.3  # an explicit value always wins


def test_amp_flags_map_to_accelerate_precision():
    assert parse_args(["--amp"]).mixed_precision == "fp16"
    assert parse_args(["--amp", "--loss-scale", "128"]).loss_scale == 128.0
    assert parse_args(["--amp", "--loss-scale", "dynamic"]).loss_scale is None
    o2 = read_command(["--amp", "--opt-level", "O2"])
    assert o2.command_line["mixed_precision"] == "fp16" and "O2" in o2.notes[0] and "fp32 weights" in o2.notes[0]
    assert parse_args(["--opt-level", "O0"]).mixed_precision == "no"
    with pytest.raises(UsageError, match="keep one"):
        parse_args(["--amp", "--mixed-precision", "bf16"])
    with pytest.raises(UsageError, match="--loss-scale applies to fp16, but this run uses bf16"):
        parse_args(["--mixed-precision", "bf16", "--loss-scale", "64"])


@pytest.mark.parametrize("flags, replacement", [
    (["--world-size", "2"], "--num_machines"),
    (["--rank", "1"], "--machine_rank"),
    (["--dist-url", "tcp://1.2.3.4:2345"], "--main_process_port"),
    (["--addr", "1.2.3.4"], "--main_process_ip"),
    (["--dist-backend", "hccl"], "hccl on NPU"),
    (["--multiprocessing-distributed"], "gpu_8p.yaml"),
    (["--device-list", "0,1"], "--gpu_ids"),
])
def test_old_distributed_flags_name_their_replacement(flags, replacement):
    with pytest.raises(UsageError, match=replacement):
        parse_args(flags)


@pytest.mark.parametrize("args, message", [
    (["-a", "resnet18"], "invalid choice"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--lr", "-1"], "--lr must be >= 0"),
    (["--image-size", "16"], "at least 32"),
    (["--data", "/no/such/folder"], "no such file or directory"),
    (["--evaluate"], "--evaluate needs weights"),
    (["--resume", "/no/such/ckpt", "--epochs", "1"], "no such checkpoint folder"),
    (["--pretrained", "weights.pth"], "no such file"),
    (["--device", "gpu"], "--device gpu, but this launch runs on cpu"),
    (["--gpu-decode"], "--gpu-decode uses nvJPEG on NVIDIA GPUs"),
    (["--compile-mode", "max-autotune"], "--compile-mode and --compile-backend choose how --compile compiles: add --compile"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    code = main([*args, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_folder_without_train_and_unwritable_output(tmp_path, capsys):
    (tmp_path / "data" / "val" / "a").mkdir(parents=True)
    assert main(["--data", str(tmp_path / "data"), "--output-dir", str(tmp_path / "o")]) == 2
    assert "no train/ folder" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["--output-dir", str(blocker / "sub"), "--epochs", "1"]) == 2
    assert "is not writable" in capsys.readouterr().err


def test_entry_point_prints_no_traceback(tmp_path):
    done = run_cli("--data", str(tmp_path / "missing"), launcher=())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'missing'}: no such file or directory"]


def test_config_checks_its_values_directly():
    with pytest.raises(UsageError, match="--arch: unknown value 'vgg17'"):
        config_of(arch="vgg17")
    with pytest.raises(UsageError, match="exclude each other"):
        config_of(data="/x", dataset="synthetic")


def test_every_accelerate_config_loads_with_accelerates_loader():
    files = sorted(glob.glob(str(ROOT / "accelerate_configs" / "*.yaml")))
    names = {f.rsplit("/", 1)[1] for f in files}
    assert {"gpu_1p.yaml", "gpu_8p.yaml", "npu_1p.yaml", "npu_8p.yaml"} <= names
    for f in files:
        cfg = load_config_from_file(f)
        assert isinstance(cfg.distributed_type, DistributedType), f  # 'NO' stayed a string, not False
        if "gpu" in f:
            assert cfg.mixed_precision == "bf16"
        if "npu" in f:
            assert cfg.mixed_precision == "fp16"  # the 910A has no bf16
        if "8p" in f:
            assert cfg.num_processes == 8 and cfg.distributed_type.value.startswith("MULTI_")
        if "2node" in f:
            assert (cfg.num_machines, cfg.num_processes, cfg.main_process_port) == (2, 16, 29500)
            assert cfg.main_process_ip and cfg.rdzv_backend == "static"
    assert {"gpu_2node.yaml", "npu_2node.yaml"} <= names


def test_which_ascend_chips_have_bf16():
    from vgg16.launch import npu_supports_bf16

    assert npu_supports_bf16("Ascend910B2") and npu_supports_bf16("Ascend910B4") and npu_supports_bf16("Ascend910_9391")
    assert not any(map(npu_supports_bf16, ["Ascend910A", "Ascend910ProA", "Ascend910PremiumA", "Ascend910ProB",
                                           "Ascend310P3"]))


@pytest.mark.parametrize("entry", [["train_vgg16.py", "--help"], ["-m", "vgg16.tools.device_check", "--help"],
                                   ["-m", "vgg16.tools.benchmark", "--help"]])
def test_torch_npu_without_cann_is_one_line(tmp_path, entry):
    """torch auto-loads every installed backend (entry point group torch.backends) on `import torch`. Here an
    installed stand-in for torch_npu fails to load as the real one does without CANN on the library path (no
    Ascend here); our entry points must say so in one line with the fix, and the fix itself must work."""
    import os
    import subprocess
    import sys

    site = tmp_path / "site"
    (site / "torch_npu_standin-1.0.dist-info").mkdir(parents=True)
    (site / "torch_npu_standin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: torch-npu-standin\n"
                                                                      "Version: 1.0\n")
    (site / "torch_npu_standin-1.0.dist-info" / "entry_points.txt").write_text(
        "[torch.backends]\ntorch_npu = torch_npu_standin:_autoload\n")
    (site / "torch_npu_standin.py").write_text(
        "def _autoload():\n    raise ImportError('libhccl.so: cannot open shared object file: No such file or directory')\n")
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{ROOT}"}
    done = subprocess.run([sys.executable, *entry], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "torch_npu" in lines[0] and "libhccl.so" in lines[0] and "set_env.sh" in lines[0]
    assert "TORCH_DEVICE_BACKEND_AUTOLOAD=0" in lines[0]
    if entry[0] == "train_vgg16.py":  # the fix the line gives works (once: each start costs seconds)
        fixed = subprocess.run([sys.executable, *entry], cwd=ROOT, env={**env, "TORCH_DEVICE_BACKEND_AUTOLOAD": "0"},
                               capture_output=True, text=True, timeout=120)
        assert fixed.returncode == 0 and "usage" in fixed.stdout


def test_dist_timeout_reaches_the_process_group_settings(tmp_path):
    from datetime import timedelta

    from vgg16.launch import make_accelerator

    cfg = parse_args(["--dist-timeout", "90", "--output-dir", str(tmp_path)])
    assert cfg.dist_timeout == 90
    assert make_accelerator(cfg).init_handler.timeout == timedelta(minutes=90)
    with pytest.raises(UsageError, match="--dist-timeout"):
        parse_args(["--dist-timeout", "0"])


def test_a_launch_for_accelerators_on_a_machine_without_them_is_one_line(tmp_path, capsys, monkeypatch):
    """What `accelerate launch --config_file accelerate_configs/gpu_8p.yaml` starts here (a CPU machine): each
    process sees WORLD_SIZE 8 and no ACCELERATE_USE_CPU. Stopped before any process group forms, on rank 0 only."""
    for rank, printed in ((0, True), (3, False)):
        monkeypatch.setenv("WORLD_SIZE", "8")
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("LOCAL_RANK", str(rank))
        monkeypatch.setenv("ACCELERATE_USE_CPU", "False")
        assert main(["--output-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert (f"error: rank {rank} of 8: 8 processes were launched on this machine for GPUs or NPUs, but it has "
                "none visible" in err) is printed and len(err.splitlines()) == int(printed)


def test_more_processes_than_devices_names_both_counts():
    from vgg16.launch import check_devices

    with pytest.raises(UsageError, match="8 processes were launched on this machine, but it has 4 GPU"):
        check_devices(8, use_cpu=False, devices={"cuda": 4})
    with pytest.raises(UsageError, match="it has 2 NPU"):
        check_devices(4, use_cpu=False, devices={"npu": 2})
    check_devices(8, use_cpu=False, devices={"cuda": 8})
    check_devices(8, use_cpu=True, devices={})  # CPU processes need no device
    check_devices(1, use_cpu=False, devices={})  # one process runs on the CPU when there is nothing else


# ---------------------------------------------------------------- options declared once
def test_the_parser_is_built_from_the_declarations_and_repeats_no_default():
    """Every config field has a flag and every flag a field (or is one of the old scripts' flags, which name the
    field they set or stop the run); the parser's defaults are the fields' own; recipe keys are field names."""
    import inspect

    from vgg16 import cli, config
    from vgg16.options import declared, help_text

    fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    options = {f.name for f, _ in declared(TrainConfig)}
    assert set(fields) == options  # every field is an option
    actions = [a for a in cli.build_parser()._actions if a.dest != "help"]
    legacy = set(cli.LEGACY_PRECISION) | set(cli.LEGACY_DISTRIBUTED)
    assert {a.dest for a in actions} == options | legacy | {"config"}
    for a in actions:
        if a.dest in options:
            f = fields[a.dest]
            o = f.metadata["option"]
            # Nothing in the namespace for an option not given: the command line is one layer of the resolution.
            assert a.default == argparse.SUPPRESS and tuple(a.option_strings)[:len(o.flags)] == o.flags, a.dest
            assert a.help.replace("%%", "%") == help_text(f, o) and "default" in a.help, a.dest
    for name, recipe in RECIPES.items():
        assert set(recipe.values) <= options, name
    # No module writes an option's default again (the old parser and config each had one).
    for module in (cli, config):
        source = inspect.getsource(module)
        source = source.replace('groups[RUN].add_argument("--config"', "")  # --config: not an option of a run
        assert "add_argument(" not in source.replace("apex.add_argument(", "").replace("legacy.add_argument(", "")
        assert "default=" not in source


def test_a_value_out_of_its_declared_range_is_one_line_naming_flag_and_value():
    with pytest.raises(UsageError, match=r"^--momentum must be in \[0, 1\) \(got 1\)$"):
        config_of(momentum=1.0)
    with pytest.raises(UsageError, match=r"^--workers must be >= 0 \(got -1\)$"):
        parse_args(["-j", "-1"])
    with pytest.raises(UsageError, match=r"^--dataset: unknown value 'imagenet': use auto, synthetic, digits, or"):
        config_of(dataset="imagenet")
    assert parse_args(["--loss-scale", "dynamic"]).loss_scale is None


def test_a_config_is_complete_when_built_and_resolving_its_own_values_again_changes_nothing():
    cfg = config_of(data="x", nesterov=True)
    assert (cfg.recipe, cfg.arch, cfg.lr, cfg.opt, cfg.epochs) == ("torchvision", "vgg16", 0.01, "sgd_nesterov", 90)
    assert None not in (cfg.workers, cfg.val_batch_size, cfg.image_size, cfg.val_resize_size, cfg.val_crop_size)
    assert config_of(**cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 0.1  # nothing fills or replaces a value once resolved


def test_docs_list_every_option_as_help_does():
    from vgg16.options import options_markdown

    assert options_markdown(TrainConfig) in (ROOT / "docs" / "options.md").read_text()
