"""A whole run: config -> Accelerator -> data, model, optimizer -> prepare -> epochs -> results.json.

`main(argv)` is the command line (train_vgg16.py calls it); `run(cfg)` is the same for code and tests.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import accelerate
import torch
from accelerate.utils import set_seed
from torch import nn

from . import checkpoint as ckpt
from .cli import parse_args
from .config import TrainConfig
from .data.inputs import build_inputs
from .data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from .compiling import compile_in_place
from .engine import Normalizer, NonFiniteLoss, evaluate
from .errors import SaidByMainProcess, UsageError, lost_a_peer, one_line, process_label
from .finetune import freezing_for, load_start, start_weights
from .fit import EpochLoop, write_reports
from .hub import BackgroundPusher, PushFailed, push_to_hub
from .launch import device_name, make_accelerator, use_cpu_cores
from .model import ModelConfig, build_model, check_state_dict, count_parameters, head_for, num_classes_of
from .optim import build_optimizer, use_fused
from .report import RunResults
from .preempt import EXIT_PREEMPTED, Preempted, StopAgreement, StopRequest
from .run_lock import take_output_dir

# The linear scaling rule (Goyal et al. 2017): lr grows with the global batch, relative to a batch of 256.
LR_REFERENCE_BATCH = 256


def _rounded(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _extras(cfg: TrainConfig) -> list:
    """The recipe options in force, for the start-up line."""
    return [(f"auto-augment {cfg.auto_augment}", cfg.auto_augment), (f"random erase {cfg.random_erase:g}", cfg.random_erase),
            (f"mixup {cfg.mixup_alpha:g}", cfg.mixup_alpha), (f"cutmix {cfg.cutmix_alpha:g}", cfg.cutmix_alpha),
            (f"label smoothing {cfg.label_smoothing:g}", cfg.label_smoothing),
            (f"warm-up {cfg.warmup_epochs:g} epochs", cfg.warmup_epochs), ("EMA", cfg.model_ema),
            (f"repeated augmentation x{cfg.ra_reps}", cfg.ra_sampler),
            (f"clip grad norm {cfg.clip_grad_norm or 0:g}", cfg.clip_grad_norm)]


def _load_checkpoint_weights(cfg: TrainConfig, model: nn.Module, num_classes: int) -> None:
    """--evaluate --resume CHECKPOINT: that checkpoint's weights, which must fit these classes."""
    state = ckpt.read_weights(Path(cfg.resume) / ckpt.WEIGHTS)
    if num_classes_of(state) != num_classes:
        raise UsageError(f"--resume {cfg.resume} has {num_classes_of(state)} classes but the data has {num_classes}: "
                         "evaluation needs weights trained on these classes")
    check_state_dict(model, state, f"--resume {cfg.resume}")
    model.load_state_dict(state)


def run(cfg: TrainConfig) -> dict:
    # Installed first: a signal during start-up is kept and honoured at the first step boundary.
    request = StopRequest().install() if not cfg.evaluate else None
    lock = None
    try:
        accelerator = make_accelerator(cfg)
        lock = take_output_dir(accelerator, Path(cfg.output_dir))
        if lock is not None and lock.note:
            accelerator.print(f"note: {lock.note}", flush=True)
        stop = StopAgreement(accelerator, request) if request is not None else None
        try:
            return _run(cfg, accelerator, stop)
        except Preempted:
            accelerator.end_training()
            raise
    finally:
        if lock is not None:
            lock.release()
        if request is not None:
            request.restore()


def _run(cfg: TrainConfig, accelerator, stop: Optional[StopAgreement]) -> dict:
    output_dir = Path(cfg.output_dir)
    log = lambda message: accelerator.print(message, flush=True)  # noqa: E731 - main process only
    cfg = dataclasses.replace(cfg, resume=ckpt.resolve_resume(cfg.resume, output_dir, cfg.evaluate, log))
    accelerator.init_trackers("vgg16", config={k: v for k, v in cfg.to_dict().items()
                                               if isinstance(v, (int, float, str, bool))})
    set_seed(cfg.seed)  # before the model is built: the seed decides the initial weights

    cfg, weights = start_weights(cfg, accelerator)
    stream_state = ckpt.read_trainer_state(cfg.resume).get("streaming") if cfg.streaming and cfg.resume \
        and not cfg.evaluate else None
    inputs = build_inputs(cfg, accelerator, stream_state, weights.sizes if weights else None)
    classes, dataset_name, (image_size, val_resize, val_crop) = inputs.class_names, inputs.name, inputs.sizes
    head = head_for(image_size)
    mean, std = (weights.mean, weights.std) if weights else (IMAGENET_MEAN, IMAGENET_STD)
    model = build_model(cfg.arch, len(classes), head=head, dropout=cfg.dropout)
    started_from = None
    if weights is not None:
        started_from = load_start(model, weights, class_names=classes, head=head, evaluate=cfg.evaluate)
    elif cfg.evaluate and cfg.resume:
        _load_checkpoint_weights(cfg, model, len(classes))
    freezing = freezing_for(model, cfg.freeze_features, 0 if cfg.evaluate else cfg.freeze_epochs)
    model_config = ModelConfig(
        cfg.arch, len(classes), image_size, head, cfg.dropout, classes, list(mean), list(std), val_resize, val_crop,
        cfg.interpolation, cfg.recipe, pretrained=weights.source if weights else None, started_from=started_from,
        base_model=weights.hub_id if weights else None, frozen=freezing.describe() if freezing else None,
        backbone_lr_scale=cfg.backbone_lr_scale if cfg.backbone_lr_scale != 1.0 else None)
    if inputs.val_images < accelerator.num_processes:
        raise UsageError(f"{inputs.val_images} validation image(s) for {accelerator.num_processes} processes: every "
                         "process needs at least one; launch fewer processes or use a larger validation split")
    workers = inputs.workers
    global_batch = cfg.batch_size * accelerator.num_processes * cfg.grad_accum
    lr = cfg.lr * global_batch / LR_REFERENCE_BATCH if cfg.lr_scale_by_batch else cfg.lr

    threads_note = use_cpu_cores(accelerator)
    for note in (*cfg.notes, *inputs.notes, *([threads_note] if threads_note else [])):
        log(f"note: {note}")
    log(f"{cfg.arch} ({head} head, {count_parameters(model) / 1e6:.1f}M parameters) on {dataset_name}: "
        f"{inputs.train_images} train / {inputs.val_images} val images, {len(classes)} classes, {image_size} px")
    if started_from:
        log(f"pretrained: {started_from}; input mean {_rounded(mean)} std {_rounded(std)}")
    log(f"{accelerator.num_processes} process(es) on {accelerator.device.type}, {accelerator.mixed_precision} precision, "
        f"global batch {global_batch} ({cfg.batch_size} x {accelerator.num_processes} x {cfg.grad_accum}), "
        f"{workers} workers per process")
    log(f"recipe {cfg.recipe}: {cfg.opt} lr {lr:g}"
        + (f" (--lr {cfg.lr:g} x global batch {global_batch} / {LR_REFERENCE_BATCH}, linear scaling)"
           if cfg.lr_scale_by_batch else "")
        + f", {cfg.lr_scheduler} schedule, {cfg.epochs} epochs; train crop {image_size}, val {val_resize} -> {val_crop}"
        + "".join(f", {name}" for name, on in _extras(cfg) if on)
        + (f", frozen: {freezing.describe()}" if freezing else "")
        + (f", features at lr x {cfg.backbone_lr_scale:g}" if cfg.backbone_lr_scale != 1.0 else ""))
    results = RunResults(
        cfg.arch, dataset_name, image_size, head, len(classes), inputs.train_images, global_batch, cfg.batch_size,
        cfg.grad_accum, accelerator.num_processes, accelerator.mixed_precision, accelerator.device.type,
        device_name(accelerator), torch.__version__, accelerate.__version__, lr, cfg.lr, cfg.lr_scale_by_batch,
        cfg.seed, cfg.recipe, pretrained=weights.source if weights else None, command=" ".join(sys.argv))
    normalize = Normalizer(mean, std, accelerator.device, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:  # before accelerate.prepare wraps it in DDP (compiling.py says why)
        compile_in_place(model, normalize, backend=cfg.compile_backend, mode=cfg.compile_mode)

    if cfg.evaluate:
        model, _, _, val_loader = inputs.prepare(accelerator, model, train=False)
        metrics = evaluate(model, val_loader, accelerator, normalize, log=log, prepare_batch=inputs.val_prepare)
        results.update(acc1=metrics["acc1"], acc5=metrics["acc5"], val_images=metrics["count"],
                       val_loss=metrics["loss"], bad_images=metrics["bad_images"], fps=0.0, epochs=0, steps=0,
                       evaluated=cfg.resume or cfg.pretrained)
    else:
        optimizer = build_optimizer(model, opt=cfg.opt, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    norm_weight_decay=cfg.norm_weight_decay, bias_weight_decay=cfg.bias_weight_decay,
                                    nesterov=cfg.nesterov, backbone_lr_scale=cfg.backbone_lr_scale,
                                    fused=use_fused(accelerator.device.type, accelerator.mixed_precision))
        model, optimizer, train_loader, val_loader = inputs.prepare(accelerator, model, optimizer)
        pusher = BackgroundPusher(cfg.hub_model_id, cfg.hub_private, log) \
            if cfg.hub_strategy == "every_save" and accelerator.is_main_process else None
        try:
            EpochLoop(cfg, accelerator, model, optimizer, train_loader, val_loader, normalize, inputs, model_config,
                      results, log, pusher, freezing, stop).run()
        finally:
            if pusher is not None:
                pusher.close()
    if stop is not None:
        stop.finish()  # before end_training destroys the process group
    _finish(cfg, accelerator, output_dir, results, model_config, log)
    return results.to_dict()


def _finish(cfg: TrainConfig, accelerator, output_dir: Path, results: RunResults, model_config: ModelConfig,
            log) -> None:
    results.status = "finished"
    if accelerator.is_main_process:
        write_reports(output_dir, results, model_config)
    accelerator.wait_for_everyone()
    log(f"Acc@1 {results.acc1 or 0:.3f}  Acc@5 {results.acc5 or 0:.3f}  FPS {results.fps or 0:.1f}  "
        f"({results.num_processes}p {results.device} {results.mixed_precision}, "
        f"global batch {results.global_batch_size}) -> {output_dir / 'results.json'}")
    accelerator.end_training()
    if cfg.push_to_hub and accelerator.is_main_process:
        log(f"pushed {output_dir} to {cfg.hub_model_id}: {push_to_hub(output_dir, cfg.hub_model_id, cfg.hub_private)}")


def _say_error(message: str) -> None:
    """One write of the whole line: print() writes the text and the newline apart, so two processes failing at
    once on one pipe could run their lines together."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def main(argv: Optional[Sequence[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        cfg = parse_args(argv)
        run(cfg)
    except SaidByMainProcess:
        return 2
    except Preempted as e:
        sys.stdout.write(f"{process_label()}{e}\n")  # one write: N processes share the pipe
        sys.stdout.flush()
        return EXIT_PREEMPTED
    except (UsageError, NonFiniteLoss, PushFailed) as e:
        if debug:
            raise
        # Before the process group forms, a UsageError is the launch's or the command line's, the same in every
        # process: the first process of each machine says it, instead of N copies.
        if not (isinstance(e, UsageError) and not torch.distributed.is_initialized()
                and os.environ.get("LOCAL_RANK", "0") != "0"):
            _say_error(f"{process_label()}{one_line(e)}")
        return 2 if isinstance(e, UsageError) else 1
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - only a lost peer is answered here; anything else keeps its traceback
        cause = lost_a_peer(e)
        if debug or not cause:
            raise
        _say_error(f"{process_label()}another process of this job ended, so this one stops too ({cause}); "
                   "that process's own error line says why (a process killed by a signal, or a lost machine, has none)")
        return 1
    return 0
