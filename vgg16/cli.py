"""Command line -> the options given (`read_command`), with every spelling of the Ascend ModelZoo scripts.

The options are declared on TrainConfig's fields (vgg16/config.py); this adds `--config FILE` (vgg16/config_file.py)
and the old scripts' flags that are not options of their own: `--amp` and `--opt-level`, which set
--mixed-precision, and the mp.spawn launcher's flags, which stop the run with the `accelerate launch` option that
replaces them (silently ignoring `--world-size 8` would train one process where the user asked for eight).
What the options resolve to is vgg16/resolve.py's work.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .config import RUN, TrainConfig
from .config_file import RUN_CONFIG, read_config_file
from .errors import UsageError
from .options import add_declared
from .resolve import GivenOptions, resolve_config

OPT_LEVELS = ("O0", "O1", "O2", "O3")


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the message and exits; we raise, so main() prints one line like every error."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see --help)")


# The apex flags of the old scripts, folded into --mixed-precision (`_precision_from_legacy`).
LEGACY_PRECISION = {
    "amp": ("--amp", "the old scripts' flag: same as --mixed-precision fp16"),
    "opt_level": ("--opt-level", "apex levels: O0 = fp32, O1 = fp16 autocast; O2/O3 run as O1 (fp32 master weights)"),
}

# Distributed flags of the old mp.spawn launcher and what replaces each (Accelerate owns the process group).
LEGACY_DISTRIBUTED = {
    "addr": "the master address is `accelerate launch --main_process_ip ADDR` (config field main_process_ip)",
    "dist_url": "use `accelerate launch --main_process_ip HOST --main_process_port PORT` "
    "(config fields main_process_ip, main_process_port)",
    "dist_backend": "the backend is chosen by Accelerate: nccl on GPU, hccl on NPU, gloo on CPU",
    "world_size": "give the machine count with `accelerate launch --num_machines N` and the total process count "
    "with `--num_processes P` (config fields num_machines, num_processes)",
    "rank": "give this machine's rank with `accelerate launch --machine_rank R` (config field machine_rank)",
    "multiprocessing_distributed": "start one process per device with `accelerate launch --config_file "
    "accelerate_configs/gpu_8p.yaml` (or npu_8p.yaml), or `accelerate launch --multi_gpu --num_processes 8`",
    "device_list": "choose devices with `accelerate launch --gpu_ids 0,1,2,3 --num_processes 4` "
    "(config field gpu_ids; on Ascend it becomes ASCEND_RT_VISIBLE_DEVICES)",
}


def build_parser() -> argparse.ArgumentParser:
    p = _OneLineParser(
        prog="train_vgg16.py",
        description="Train or evaluate VGG on ImageNet-style folders, CIFAR-10, datasets or the embedded digits. "
        "Launch with `accelerate launch [--config_file accelerate_configs/X.yaml] train_vgg16.py ...`.",
        allow_abbrev=False,
    )
    groups = add_declared(p, TrainConfig)
    groups[RUN].add_argument("--config", metavar="FILE",
                             help=f"take the options from this YAML file (a run's {RUN_CONFIG} reruns it); flags given "
                             "beside it win (default: none)")
    apex = p.add_argument_group("apex flags of the old scripts (set --mixed-precision)")
    apex.add_argument(LEGACY_PRECISION["amp"][0], dest="amp", action="store_true", help=LEGACY_PRECISION["amp"][1])
    apex.add_argument(LEGACY_PRECISION["opt_level"][0], dest="opt_level", choices=OPT_LEVELS,
                      help=LEGACY_PRECISION["opt_level"][1])
    legacy = p.add_argument_group("flags of the old scripts that `accelerate launch` replaces (each stops the run "
                                  "and names its replacement)")
    for name in LEGACY_DISTRIBUTED:
        flag = "--" + name.replace("_", "-")
        if name == "multiprocessing_distributed":
            legacy.add_argument(flag, dest=name, action="store_const", const=True)
        else:
            legacy.add_argument(flag, dest=name)
    return p


def _precision_from_legacy(ns: argparse.Namespace, notes: list) -> Optional[str]:
    """Fold --amp / --opt-level into --mixed-precision, refusing contradictions."""
    wanted = getattr(ns, "mixed_precision", None)
    legacy = None
    if ns.opt_level == "O0":
        legacy = "no"
    elif ns.amp or ns.opt_level:
        legacy = "fp16"
    if ns.opt_level in ("O2", "O3"):
        notes.append(f"--opt-level {ns.opt_level}: apex's fp16 master-weight modes are not used; running fp16 "
                     "autocast with fp32 weights (apex O1), which is what Accelerate does. For speed on GPU try "
                     "--mixed-precision bf16")
    if legacy and wanted and legacy != wanted:
        raise UsageError(f"--amp/--opt-level ask for {legacy} but --mixed-precision says {wanted}: keep one")
    return wanted or legacy


def read_command(argv: Optional[Sequence[str]] = None) -> GivenOptions:
    """The options the command line gives, and those of its --config file."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ns = build_parser().parse_args(argv)
    used = [k for k in LEGACY_DISTRIBUTED if getattr(ns, k) is not None]
    if used:
        flags = ", ".join("--" + k.replace("_", "-") for k in used)
        raise UsageError(f"{flags} belong to the old mp.spawn launcher: " + "; ".join(LEGACY_DISTRIBUTED[k] for k in used))
    notes: list = []
    given = {name: value for name, value in vars(ns).items() if name in TrainConfig.__dataclass_fields__}
    precision = _precision_from_legacy(ns, notes)
    if precision is not None:
        given["mixed_precision"] = precision
    from_file = read_config_file(ns.config) if ns.config else {}
    return GivenOptions(command_line=given, config_file=from_file, config_path=ns.config, notes=tuple(notes),
                        command=" ".join(["train_vgg16.py", *argv]))


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    """The config a command resolves to before the weights and data are looked at (vgg16/resolve.py): what
    --help's defaults and the recipe make of it."""
    return resolve_config(read_command(argv))
