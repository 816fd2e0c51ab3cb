"""Command line -> TrainConfig, with every spelling of the Ascend ModelZoo scripts.

The old scripts' flags either work here (as aliases) or stop the run with the `accelerate launch` option that
replaces them: silently ignoring `--world-size 8` would train one process where the user asked for eight.
"""

from __future__ import annotations

import argparse
from typing import Optional, Sequence

from .config import ARCHS, DEVICES, OPT_LEVELS, PRECISIONS, SCHEDULERS, TrainConfig
from .errors import UsageError


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
                   help="ImageNet-style folder (train/, val/), cifar-10-batches-py, a parquet folder, a "
                   "save_to_disk folder, or a hub dataset name; omit for the embedded digits")
    d.add_argument("--dataset", default="auto", help="synthetic (random tensors, for throughput) or digits")
    d.add_argument("--num-classes", type=int, help="class count for --dataset synthetic (default 1000)")
    d.add_argument("--image-size", type=int, help="training crop (default 224; 32 for images below 64 px)")
    d.add_argument("--hflip", type=float, help="horizontal flip probability (default 0.5; 0 on the embedded digits)")
    d.add_argument("--strict-data", action="store_true",
                   help="stop at the first unreadable image (default: skip it, warn once, count it in results.json)")
    d.add_argument("-j", "--workers", type=int, help="data loading workers per process (default: CPUs / processes, max 8)")

    m = p.add_argument_group("model")
    m.add_argument("-a", "--arch", "--a", choices=ARCHS, metavar="ARCH",
                   help=f"one of {', '.join(ARCHS)} (default vgg16; vgg16_bn on the embedded digits)")
    m.add_argument("--dropout", type=float, default=0.5, help="dropout in the classifier (default 0.5)")
    m.add_argument("--pretrained", nargs="?", const="", metavar="WEIGHTS",
                   help="torchvision-format weights: a .safetensors file, an exported folder or a hub model id")

    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", "--epoch", dest="epochs", type=int, help="default 90 (8 on the embedded digits)")
    o.add_argument("--start-epoch", type=int, help="epoch to start from (overrides the one stored by --resume)")
    o.add_argument("-b", "--batch-size", type=int, help="per process (default 32; 64 on the embedded digits)")
    o.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
    o.add_argument("--lr", "--learning-rate", dest="lr", type=float, help="default 0.01 (0.05 on the embedded digits)")
    o.add_argument("--lr-scale-by-batch", action="store_true",
                   help="linear scaling rule: the lr used is --lr x global batch / 256 (printed at start)")
    o.add_argument("--momentum", "--mom", dest="momentum", type=float, default=0.9)
    o.add_argument("--wd", "--weight-decay", dest="weight_decay", type=float,
                   help="default 1e-4 (5e-4 on the embedded digits)")
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--lr-scheduler", choices=SCHEDULERS, help="default step (cosine on the embedded digits)")
    o.add_argument("--lr-step-size", type=int, default=30, help="epochs between lr decays for step (default 30)")
    o.add_argument("--lr-gamma", type=float, default=0.1)
    o.add_argument("--warmup-epochs", type=float, help="linear warm-up from lr/100 (default 0; 1 on the embedded digits)")
    o.add_argument("--label-smoothing", type=float, default=0.0)
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
    if ns.pretrained == "":
        raise UsageError("--pretrained needs the weights to load: --pretrained PATH.safetensors, an exported "
                         "folder, or a hub model id")
    notes: list = []
    mixed_precision = _precision_from_legacy(ns, notes)
    loss_scale = None
    if ns.loss_scale is not None and ns.loss_scale.lower() != "dynamic":
        try:
            loss_scale = float(ns.loss_scale)
        except ValueError:
            raise UsageError(f"--loss-scale takes a number or 'dynamic' (got {ns.loss_scale!r})") from None
    return TrainConfig(
        data=ns.data, dataset=ns.dataset, num_classes=ns.num_classes, image_size=ns.image_size, hflip=ns.hflip, strict_data=ns.strict_data, workers=ns.workers,
        arch=ns.arch, dropout=ns.dropout, pretrained=ns.pretrained,
        epochs=ns.epochs, start_epoch=ns.start_epoch, batch_size=ns.batch_size, grad_accum=ns.grad_accum,
        lr=ns.lr, lr_scale_by_batch=ns.lr_scale_by_batch, momentum=ns.momentum, weight_decay=ns.weight_decay, nesterov=ns.nesterov,
        lr_scheduler=ns.lr_scheduler, lr_step_size=ns.lr_step_size, lr_gamma=ns.lr_gamma,
        warmup_epochs=ns.warmup_epochs, label_smoothing=ns.label_smoothing, seed=ns.seed,
        mixed_precision=mixed_precision, loss_scale=loss_scale, device=ns.device, deterministic=ns.deterministic,
        channels_last=ns.channels_last, compile=ns.compile, gpu_decode=ns.gpu_decode,
        output_dir=ns.output_dir, print_freq=ns.print_freq, evaluate=ns.evaluate, resume=ns.resume, keep_checkpoints=ns.keep_checkpoints,
        checkpoint_every=ns.checkpoint_every,
        stop_step_num=ns.stop_step_num, prof=ns.prof, debug=ns.debug, notes=notes,
        report_to=ns.report_to, push_to_hub=ns.push_to_hub, hub_model_id=ns.hub_model_id, hub_private=ns.hub_private,
    ).with_recipe_defaults()
