"""Command line -> TrainConfig, with every spelling of the Ascend ModelZoo scripts.

The old scripts' flags either work here (as aliases) or stop the run with the `accelerate launch` option that
replaces them: silently ignoring `--world-size 8` would train one process where the user asked for eight.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

import dataclasses

from .config import (ARCHS, AUTO_AUGMENTS, DEVICES, INTERPOLATIONS, LR_UPDATES, OPT_LEVELS, OPTIMIZERS, PRECISIONS,
                     WARMUP_METHODS, TrainConfig)
from .errors import UsageError
from .recipes import RECIPES, help_default


def _from_recipe(option: str) -> str:
    return f"default from --recipe: {help_default(option)}"


# torchvision's reference spells its schedulers by class name; both spellings work.
SCHEDULER_NAMES = {"step": "step", "steplr": "step", "cosine": "cosine", "cosineannealinglr": "cosine"}


class _OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the message and exits; we raise, so main() prints one line like every error."""

    def error(self, message: str) -> None:  # noqa: D102 - argparse API
        raise UsageError(f"{message} (see --help)")


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
    d = p.add_argument_group("data")
    d.add_argument("--data", "--data_path", "--data-path", dest="data", metavar="PATH_OR_NAME",
                   help="ImageNet-style folder (train/, val/) or a folder of class folders, cifar-10-batches-py, "
                   "a parquet folder, a save_to_disk folder, or a hub dataset name; omit for the embedded digits")
    d.add_argument("--dataset", default="auto", help="synthetic (random tensors, for throughput) or digits")
    d.add_argument("--num-classes", type=int, help="class count for --dataset synthetic (default 1000)")
    d.add_argument("--image-size", "--train-crop-size", dest="image_size", type=int,
                   help="training crop (default 224, or the recipe's; 32 for images below 64 px)")
    d.add_argument("--val-resize-size", type=int, help="resize before the validation crop (default crop x 256/224)")
    d.add_argument("--val-crop-size", type=int, help="validation centre crop (default: the training crop)")
    d.add_argument("--interpolation", choices=INTERPOLATIONS, default="bilinear", help="resize interpolation")
    d.add_argument("--hflip", type=float, help="horizontal flip probability; " + _from_recipe("hflip"))
    d.add_argument("--auto-augment", choices=AUTO_AUGMENTS, metavar="POLICY",
                   help=f"{' | '.join(AUTO_AUGMENTS)}: RandAugment, TrivialAugmentWide, AugMix or an AutoAugment "
                   "policy; " + _from_recipe("auto_augment"))
    d.add_argument("--ra-magnitude", type=int, default=9, help="RandAugment magnitude (default 9)")
    d.add_argument("--augmix-severity", type=int, default=3, help="AugMix severity (default 3)")
    d.add_argument("--random-erase", type=float, metavar="P", help="random erasing probability; " + _from_recipe("random_erase"))
    d.add_argument("--mixup-alpha", type=float, help="mixup Beta(alpha, alpha), batch-level; " + _from_recipe("mixup_alpha"))
    d.add_argument("--cutmix-alpha", type=float, help="cutmix Beta(alpha, alpha), batch-level; " + _from_recipe("cutmix_alpha"))
    d.add_argument("--ra-sampler", action=argparse.BooleanOptionalAction,
                   help="repeated augmentation: each image --ra-reps times per epoch; " + _from_recipe("ra_sampler"))
    d.add_argument("--ra-reps", type=int, default=3, help="repetitions for --ra-sampler (default 3)")
    d.add_argument("--strict-data", action="store_true",
                   help="stop at the first unreadable image (default: skip it, warn once, count it in results.json)")
    d.add_argument("--streaming", action="store_true",
                   help="read parquet shards (hub name or local folder) as a stream, an equal part per process; "
                        "no download or conversion first")
    d.add_argument("--shuffle-buffer", type=int, default=8192, metavar="ROWS",
                   help="--streaming: rows per process held for shuffling, in memory (default 8192)")
    d.add_argument("-j", "--workers", type=int, help="data loading workers per process (default: CPUs / processes, max 8)")

    m = p.add_argument_group("model")
    m.add_argument("-a", "--arch", "--a", choices=ARCHS, metavar="ARCH",
                   help=f"one of {', '.join(ARCHS)} (default vgg16; vgg16_bn on the embedded digits)")
    m.add_argument("--dropout", type=float, default=0.5, help="dropout in the classifier (default 0.5)")
    m.add_argument("--pretrained", nargs="?", const="", metavar="WEIGHTS",
                   help="start from these weights (alone: torchvision's ImageNet weights of --arch): a torchvision "
                   "weights name (IMAGENET1K_V1, DEFAULT, IMAGENET1K_FEATURES), a .safetensors or .pth file, an "
                   "exported or timm folder, or a hub id (USER/NAME, timm/vgg16.tv_in1k); the arch, input mean/std "
                   "and sizes follow the weights; default recipe finetune")
    m.add_argument("--freeze-features", action="store_true",
                   help="train the classifier only: the features and their BatchNorm statistics stay as loaded")
    m.add_argument("--freeze-epochs", type=int, metavar="N",
                   help="the classifier alone for N epochs, then every layer; " + _from_recipe("freeze_epochs"))
    m.add_argument("--backbone-lr-scale", type=float, metavar="F",
                   help="the features train at lr x F (discriminative lr); " + _from_recipe("backbone_lr_scale"))

    o = p.add_argument_group("optimisation")
    o.add_argument("--recipe", choices=list(RECIPES),
                   help="fills every option you do not give (docs/recipes.md); default torchvision with --data, "
                   "digits without")
    o.add_argument("--epochs", "--epoch", dest="epochs", type=int, help=_from_recipe("epochs"))
    o.add_argument("--start-epoch", type=int, help="epoch to start from (overrides the one stored by --resume)")
    o.add_argument("-b", "--batch-size", type=int, help="per process; " + _from_recipe("batch_size"))
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    o.add_argument("--opt", choices=OPTIMIZERS, help=_from_recipe("opt"))
    o.add_argument("--lr", "--learning-rate", dest="lr", type=float, help=_from_recipe("lr"))
    o.add_argument("--lr-scale-by-batch", action="store_true",
                   help="linear scaling rule: the lr used is --lr x global batch / 256 (printed at start)")
    o.add_argument("--momentum", "--mom", dest="momentum", type=float, default=0.9)
    o.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float, help=_from_recipe("weight_decay"))
    o.add_argument("--norm-weight-decay", type=float, help="weight decay of normalisation layers (default: --wd); "
                   + _from_recipe("norm_weight_decay"))
    o.add_argument("--bias-weight-decay", type=float, help="weight decay of biases (default: --wd); "
                   + _from_recipe("bias_weight_decay"))
    o.add_argument("--nesterov", action="store_true", help="same as --opt sgd_nesterov")
    o.add_argument("--lr-scheduler", type=str.lower, choices=list(SCHEDULER_NAMES), metavar="step|cosine",
                   help=_from_recipe("lr_scheduler"))
    o.add_argument("--lr-step-size", type=int, help="epochs between lr decays for step; " + _from_recipe("lr_step_size"))
    o.add_argument("--lr-gamma", type=float, help=_from_recipe("lr_gamma"))
    o.add_argument("--lr-update", choices=LR_UPDATES, help="move the schedule every optimizer step or once per epoch; "
                   + _from_recipe("lr_update"))
    o.add_argument("--warmup-epochs", "--lr-warmup-epochs", dest="warmup_epochs", type=float,
                   help=_from_recipe("warmup_epochs"))
    o.add_argument("--lr-warmup-method", choices=WARMUP_METHODS, help=_from_recipe("lr_warmup_method"))
    o.add_argument("--lr-warmup-decay", type=float, help="the warm-up's starting lr factor; " + _from_recipe("lr_warmup_decay"))
    o.add_argument("--lr-min", type=float, help="the lr cosine ends at; " + _from_recipe("lr_min"))
    o.add_argument("--label-smoothing", type=float, help=_from_recipe("label_smoothing"))
    o.add_argument("--clip-grad-norm", type=float, metavar="MAX_NORM", help="clip the gradients' global norm (default off)")
    o.add_argument("--model-ema", action=argparse.BooleanOptionalAction,
                   help="keep and evaluate an exponential moving average of the weights; " + _from_recipe("model_ema"))
    o.add_argument("--model-ema-steps", type=int, default=32, help="optimizer steps between EMA updates (default 32)")
    o.add_argument("--model-ema-decay", type=float, default=0.99998,
                   help="EMA decay, rescaled by processes, batch, --model-ema-steps and epochs as torchvision does")
    o.add_argument("--seed", type=int, default=49)

    x = p.add_argument_group("precision and device")
    x.add_argument("--mixed-precision", choices=PRECISIONS, help="default: what the accelerate config says")
    x.add_argument("--amp", action="store_true", help="the old scripts' flag: same as --mixed-precision fp16")
    x.add_argument("--opt-level", choices=OPT_LEVELS,
                   help="apex levels: O0 = fp32, O1 = fp16 autocast; O2/O3 run as O1 (fp32 master weights)")
    x.add_argument("--loss-scale", metavar="N|dynamic", help="fp16 loss scale: a number (never grows) or dynamic")
    x.add_argument("--device", choices=DEVICES, help="stop unless the launch really runs on this device")
    x.add_argument("--deterministic", action="store_true", help="deterministic kernels (slower)")
    x.add_argument("--channels-last", action="store_true", help="NHWC model and inputs (GPU speed-up)")
    x.add_argument("--compile", action="store_true", help="torch.compile (inductor) through Accelerate; GPU only")
    x.add_argument("--dist-timeout", type=float, metavar="MINUTES",
                   help="process-group timeout for collectives (default torch's: 10 min NCCL, 30 gloo); raise it for "
                   "slow starts of large jobs")
    x.add_argument("--gpu-decode", action="store_true",
                   help="decode JPEG batches on the GPU (nvJPEG); workers only read files. NVIDIA only")

    r = p.add_argument_group("run")
    r.add_argument("--output-dir", default="./output")
    r.add_argument("-p", "--print-freq", type=int, default=10, help="log every N optimizer steps")
    r.add_argument("-e", "--evaluate", action="store_true", help="only evaluate --resume or --pretrained weights")
    r.add_argument("--resume", metavar="CHECKPOINT_DIR|auto",
                   help="a checkpoints/... folder written by a run, or auto: the newest in --output-dir")
    r.add_argument("--keep-checkpoints", type=int, default=2, help="newest checkpoints to keep (default 2)")
    r.add_argument("--checkpoint-every", type=int, metavar="N", help="also save every N optimizer steps")
    r.add_argument("--stop-step-num", type=int, help="stop training after N optimizer steps")
    r.add_argument("--prof", action="store_true", help="write a profiler trace of a few steps to OUTPUT/profile")
    r.add_argument("--debug", action="store_true", help="show full tracebacks")
    r.add_argument("--report-to", default="none",
                   help="Accelerate trackers, comma-separated: tensorboard (logs in OUTPUT/logs), wandb, mlflow, "
                   "comet_ml, aim, clearml, ... (default none)")
    r.add_argument("--push-to-hub", action="store_true", help="upload the model folder to the hub at the end")
    r.add_argument("--hub-model-id", metavar="USER/NAME", help="the hub repo for --push-to-hub")
    r.add_argument("--hub-private", action="store_true", help="create the hub repo as private")
    r.add_argument("--hub-strategy", choices=("end", "every_save"), default="end",
                   help="end: upload once, at the end; every_save: also after every epoch's save, in the background "
                   "(as transformers' Trainer)")

    legacy = p.add_argument_group("flags of the old scripts that `accelerate launch` replaces (each stops the run "
                                  "and names its replacement)")
    legacy.add_argument("--addr")
    legacy.add_argument("--dist-url")
    legacy.add_argument("--dist-backend")
    legacy.add_argument("--world-size", type=int)
    legacy.add_argument("--rank", type=int)
    legacy.add_argument("--multiprocessing-distributed", action="store_true", default=None)
    legacy.add_argument("--device-list")
    return p


def _precision_from_legacy(ns: argparse.Namespace, notes: list) -> Optional[str]:
    """Fold --amp / --opt-level into --mixed-precision, refusing contradictions."""
    wanted = ns.mixed_precision
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


def parse_args(argv: Optional[Sequence[str]] = None) -> TrainConfig:
    ns = build_parser().parse_args(argv)
    used = [k for k in LEGACY_DISTRIBUTED if getattr(ns, k) is not None]
    if used:
        flags = ", ".join("--" + k.replace("_", "-") for k in used)
        raise UsageError(f"{flags} belong to the old mp.spawn launcher: " + "; ".join(LEGACY_DISTRIBUTED[k] for k in used))
    notes: list = []
    mixed_precision = _precision_from_legacy(ns, notes)
    loss_scale = None
    if ns.loss_scale is not None and ns.loss_scale.lower() != "dynamic":
        try:
            loss_scale = float(ns.loss_scale)
        except ValueError:
            raise UsageError(f"--loss-scale takes a number or 'dynamic' (got {ns.loss_scale!r})") from None
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(TrainConfig) if hasattr(ns, f.name)}
    if ns.lr_scheduler is not None:
        values["lr_scheduler"] = SCHEDULER_NAMES[ns.lr_scheduler]
    values.update(mixed_precision=mixed_precision, loss_scale=loss_scale, notes=notes)
    return TrainConfig(**values).with_recipe_defaults()
