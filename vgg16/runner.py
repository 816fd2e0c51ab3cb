"""A whole run: config -> Accelerator -> data, model, optimizer -> prepare -> epochs -> results.json.

`main(argv)` is the command line (train_vgg16.py calls it); `run(cfg)` is the same for code and tests.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Optional, Sequence

import accelerate
import torch
from accelerate.utils import ProfileKwargs, set_seed
from torch import nn

from . import checkpoint as ckpt
from .cli import parse_args
from .config import TrainConfig
from .data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from .ema import ModelEMA, ema_decay
from .engine import EpochPlan, Normalizer, NonFiniteLoss, StepOptions, evaluate, train_one_epoch
from .errors import SaidByMainProcess, UsageError, lost_a_peer, one_line, process_label
from .card import model_card
from .hub import BackgroundPusher, PushFailed, push_to_hub
from .data.inputs import Inputs, build_inputs
from .launch import synchronize, assert_processes_agree, device_name, make_accelerator, use_cpu_cores
from .report import plot_curves, write_results_md
from .metrics import ThroughputMeter
from .model import build_model, check_state_dict, count_parameters, head_for, num_classes_of
from .finetune import Freezing, freezing_for, load_start, start_weights
from .mixing import BatchMixer
from .optim import use_fused, build_optimizer, build_scheduler, lr_factor, position_scheduler
from .preempt import EXIT_PREEMPTED, Preempted, StopAgreement, StopRequest
from .resume_check import RunSettings, check_resume, replan_schedule
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
    model_config = {"arch": cfg.arch, "num_classes": len(classes), "image_size": image_size, "head": head,
                    "dropout": cfg.dropout, "class_names": classes, "mean": list(mean), "std": list(std),
                    "val_resize_size": val_resize, "val_crop_size": val_crop, "interpolation": cfg.interpolation,
                    "recipe": cfg.recipe, "weights": "model", "library": "vgg16",
                    **({"pretrained": weights.source, "started_from": started_from} if weights else {}),
                    **({"base_model": weights.hub_id} if weights and weights.hub_id else {}),
                    **({"frozen": freezing.describe()} if freezing else {}),
                    **({"backbone_lr_scale": cfg.backbone_lr_scale} if cfg.backbone_lr_scale != 1.0 else {})}
    if inputs.val_images < accelerator.num_processes:
        raise UsageError(f"{inputs.val_images} validation image(s) for {accelerator.num_processes} processes: every "
                         "process needs at least one; launch fewer processes or use a larger validation split")
    train_loader, val_loader, workers = inputs.train_loader, inputs.val_loader, inputs.workers
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
    results = {"arch": cfg.arch, "dataset": dataset_name, "image_size": image_size, "head": head,
               "num_classes": len(classes), "train_images": inputs.train_images, "global_batch_size": global_batch,
               "per_process_batch_size": cfg.batch_size, "grad_accum": cfg.grad_accum,
               "num_processes": accelerator.num_processes, "mixed_precision": accelerator.mixed_precision,
               "device": accelerator.device.type, "device_name": device_name(accelerator),
               "torch": torch.__version__, "accelerate": accelerate.__version__, "lr": lr, "base_lr": cfg.lr,
               "lr_scaled_by_batch": cfg.lr_scale_by_batch, "seed": cfg.seed, "recipe": cfg.recipe,
               **({"pretrained": weights.source} if weights else {}),
               "command": " ".join(sys.argv), "status": "running"}
    normalize = Normalizer(mean, std, accelerator.device, channels_last=cfg.channels_last)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)

    if cfg.evaluate:
        model, val_loader = inputs.prepare(accelerator, model, train=False)
        metrics = evaluate(model, val_loader, accelerator, normalize, log=log, prepare_batch=inputs.val_prepare)
        results.update(acc1=metrics["acc1"], acc5=metrics["acc5"], val_images=metrics["count"],
                       val_loss=metrics["loss"], bad_images=metrics["bad_images"], fps=0.0, epochs=0, steps=0,
                       evaluated=cfg.resume or cfg.pretrained)
    else:
        # (A stream's loader counts this process's batches, and build_inputs has checked them already.)
        if inputs.streaming is None and len(train_loader) < cfg.grad_accum * accelerator.num_processes:
            raise UsageError(f"the training set has {inputs.train_images} images, fewer than one global batch "
                             f"({cfg.batch_size} x {accelerator.num_processes} processes x {cfg.grad_accum}): "
                             "lower --batch-size")
        optimizer = build_optimizer(model, opt=cfg.opt, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                    norm_weight_decay=cfg.norm_weight_decay, bias_weight_decay=cfg.bias_weight_decay,
                                    nesterov=cfg.nesterov, backbone_lr_scale=cfg.backbone_lr_scale,
                                    fused=use_fused(accelerator.device.type, accelerator.mixed_precision))
        model, optimizer, train_loader, val_loader = inputs.prepare(accelerator, model, optimizer)
        pusher = BackgroundPusher(cfg.hub_model_id, cfg.hub_private, log) \
            if cfg.hub_strategy == "every_save" and accelerator.is_main_process else None
        try:
            _fit(cfg, accelerator, model, optimizer, train_loader, val_loader, normalize, inputs, model_config,
                 results, log, pusher, freezing, stop)
        finally:
            if pusher is not None:
                pusher.close()
    if stop is not None:
        stop.finish()  # before end_training destroys the process group
    _finish(cfg, accelerator, output_dir, results, model_config, log)
    return results


def _fit(cfg: TrainConfig, accelerator, model, optimizer, train_loader, val_loader, normalize, inputs: Inputs,
         model_config: dict, results: dict, log, pusher: Optional[BackgroundPusher] = None,
         freezing: Optional[Freezing] = None, stop: Optional[StopAgreement] = None) -> None:
    """The epoch loop: train, evaluate, checkpoint, export, update results (in place) after every epoch."""
    output_dir = Path(cfg.output_dir)
    steps_per_epoch = len(train_loader) // cfg.grad_accum
    per_epoch = cfg.lr_update == "epoch"
    warmup = cfg.warmup_epochs if not per_epoch else math.ceil(cfg.warmup_epochs)
    factor = lr_factor(kind=cfg.lr_scheduler, steps_per_epoch=steps_per_epoch, total_steps=cfg.epochs * steps_per_epoch,
                       warmup_steps=round(warmup * steps_per_epoch), step_size=cfg.lr_step_size, gamma=cfg.lr_gamma,
                       warmup_method=cfg.lr_warmup_method, warmup_decay=cfg.lr_warmup_decay,
                       min_factor=cfg.lr_min / optimizer.defaults["lr"] if optimizer.defaults["lr"] else 0.0,
                       per_epoch=per_epoch)
    scheduler = build_scheduler(optimizer, factor)
    planned_base_lrs = list(scheduler.base_lrs)  # a checkpoint's scheduler state brings the lr it was saved with
    settings = RunSettings(per_process_batch=cfg.batch_size, processes=accelerator.num_processes,
                           grad_accum=cfg.grad_accum, seed=cfg.seed, train_images=inputs.train_images,
                           data_fingerprint=inputs.data_fingerprint, steps_per_epoch=steps_per_epoch,
                           epochs=cfg.epochs, lr=optimizer.defaults["lr"], lr_scheduler=cfg.lr_scheduler,
                           lr_update=cfg.lr_update, warmup_epochs=cfg.warmup_epochs, recipe=cfg.recipe, arch=cfg.arch)
    options = dataclasses.replace(_step_options(cfg, accelerator, model, len(model_config["class_names"])),
                                  freezing=freezing)
    if options.ema is not None:
        accelerator.register_for_checkpointing(options.ema)  # before load_state: the average resumes too
    start_epoch, step_in_epoch, global_step, best_acc1 = 0, 0, 0, 0.0
    if cfg.resume:
        saved_state = ckpt.read_trainer_state(cfg.resume)
        saved = RunSettings.from_dict(saved_state.get("settings"))
        changed = check_resume(cfg.resume, saved, settings, mid_epoch=saved_state.get("step_in_epoch", 0) > 0,
                               epoch_checkpoint=ckpt.newest_epoch_checkpoint(output_dir))
        state = ckpt.load_training_state(accelerator, Path(cfg.resume), model, scheduler)
        start_epoch, global_step, best_acc1 = state["epoch"], state["global_step"], state["best_acc1"]
        step_in_epoch = state.get("step_in_epoch", 0)
        log(f"resumed from {cfg.resume}: epoch {start_epoch + 1}, step {step_in_epoch} of {steps_per_epoch} "
            f"({global_step} optimizer steps done)")
        if changed:
            log("note: " + replan_schedule(scheduler, planned_base_lrs, saved, settings, changed,
                                           epoch=start_epoch, step_in_epoch=step_in_epoch))
        assert_processes_agree(accelerator, "the epoch and step to resume at", (start_epoch, step_in_epoch, global_step))
    if cfg.start_epoch is not None:
        start_epoch, step_in_epoch, global_step = cfg.start_epoch, 0, cfg.start_epoch * steps_per_epoch
        position_scheduler(scheduler, global_step)

    meter = ThroughputMeter(lambda: synchronize(accelerator.device))
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)  # takes mixup's soft targets too
    checkpoints = output_dir / "checkpoints"

    def trainer_state(epoch: int, step: int, global_step: int) -> dict:
        return {"epoch": epoch, "step_in_epoch": step, "global_step": global_step, "best_acc1": best_acc1,
                "scheduler": scheduler.state_dict(), "model": model_config, "settings": settings.to_dict(),
                **({"streaming": inputs.streaming} if inputs.streaming else {})}

    def save_mid_epoch(epoch: int):
        def after_step(step: int, global_step: int, ensure_finite) -> bool:
            if stop is not None and stop.stop_now():
                return True  # the checkpoint is written once the epoch's loop has ended
            if cfg.checkpoint_every and global_step % cfg.checkpoint_every == 0:
                ensure_finite()  # never save a model that has seen an inf/nan loss
                ckpt.save_training_state(accelerator, checkpoints, trainer_state(epoch, step, global_step),
                                         name=f"step_{global_step:09d}", keep=cfg.keep_checkpoints)
            return False
        return after_step

    def preempted(saved: Path) -> Preempted:
        results.update(status="preempted", steps=global_step,
                       stopped={"signal": stop.request.signal_name, "step": global_step, "checkpoint": str(saved)})
        if accelerator.is_main_process:
            _write_reports(output_dir, results, model_config)
        return Preempted(stop.request.signal_name, global_step, str(saved))

    started, skipped, history = time.time(), 0, results.setdefault("history", [])
    progress = sys.stdout.isatty()  # a bar in a terminal; plain lines in logs (CI, nohup, files)
    for epoch in range(start_epoch, cfg.epochs):
        remaining = cfg.stop_step_num - global_step if cfg.stop_step_num else steps_per_epoch
        if remaining <= 0:
            break
        first = step_in_epoch if epoch == start_epoch else 0
        loader = inputs.epoch_loader(accelerator, train_loader, epoch, first * cfg.grad_accum)
        plan = EpochPlan(epoch, cfg.epochs, min(steps_per_epoch - first, remaining), cfg.print_freq, first, global_step,
                         recipe=cfg.recipe)
        with _profiler(cfg, accelerator, output_dir, first=epoch == start_epoch) as profiler:
            stats = train_one_epoch(model, loader, optimizer, scheduler, criterion, accelerator, normalize, meter, plan,
                                    log, profiler, after_step=save_mid_epoch(epoch), progress=progress,
                                    prepare_batch=inputs.train_prepare, options=options)
        global_step += stats["steps"]
        skipped += stats["skipped_steps"]
        if stats["stopped"]:
            saved = ckpt.save_training_state(accelerator, checkpoints,
                                             trainer_state(epoch, first + stats["steps"], global_step),
                                             name=f"step_{global_step:09d}", keep=cfg.keep_checkpoints)
            raise preempted(saved)
        metrics = evaluate(model, val_loader, accelerator, normalize, log=log, prepare_batch=inputs.val_prepare)
        best_acc1 = max(best_acc1, metrics["acc1"])
        ema_metrics = None
        if options.ema is not None:
            ema_metrics = evaluate(options.ema.module, val_loader, accelerator, normalize, prepare_batch=inputs.val_prepare)
            log(f"validation (EMA): acc1 {ema_metrics['acc1']:.3f}  acc5 {ema_metrics['acc5']:.3f}")
        use_ema = ema_metrics is not None and ema_metrics["acc1"] > metrics["acc1"]
        model_config["weights"] = "ema" if use_ema else "model"
        finished = first + stats["steps"] == steps_per_epoch
        saved = ckpt.save_training_state(accelerator, checkpoints,
                                 trainer_state(epoch + 1, 0, global_step) if finished else
                                 trainer_state(epoch, first + stats["steps"], global_step),
                                 name=f"epoch_{epoch + 1:04d}" if finished else f"step_{global_step:09d}",
                                 keep=cfg.keep_checkpoints)
        ckpt.export_model(accelerator, options.ema.module if use_ema else model, output_dir, model_config)
        results.update(acc1=metrics["acc1"], acc5=metrics["acc5"], best_acc1=best_acc1, val_images=metrics["count"],
                       val_loss=metrics["loss"], train_loss=stats["loss"], fps=meter.fps, epochs=epoch + 1,
                       steps=global_step, bad_images=stats["bad_images"] + metrics["bad_images"],
                       fp16_skipped_steps=skipped, train_seconds=round(time.time() - started, 1),
                       exported_weights=model_config["weights"])
        history.append({"epoch": epoch + 1, "steps": global_step, "train_loss": stats["loss"], "val_loss": metrics["loss"],
                        "acc1": metrics["acc1"], "acc5": metrics["acc5"], "fps": meter.epoch_fps})
        if ema_metrics is not None:
            results.update(ema_acc1=ema_metrics["acc1"], ema_acc5=ema_metrics["acc5"])
            history[-1].update(ema_acc1=ema_metrics["acc1"], ema_acc5=ema_metrics["acc5"])
        accelerator.log({"val/acc1": metrics["acc1"], "val/acc5": metrics["acc5"], "val/loss": metrics["loss"],
                         "train/epoch_loss": stats["loss"], "train/epoch_fps": meter.epoch_fps, "epoch": epoch + 1},
                        step=global_step)
        if stats["bad_images"] or metrics["bad_images"]:
            log(f"{stats['bad_images']} unreadable training and {metrics['bad_images']} validation image(s) skipped "
                "this epoch (python -m vgg16.check_data lists them)")
        if accelerator.is_main_process:
            _write_reports(output_dir, results, model_config)
            if pusher is not None:  # --hub-strategy every_save: the copy is the only wait
                pusher.submit(output_dir, f"epoch {epoch + 1}")
        # A signal during the epoch's last step or its evaluation: that epoch is complete and saved; stop here.
        if epoch + 1 < cfg.epochs and stop is not None and stop.stop_now():
            raise preempted(saved)


def _step_options(cfg: TrainConfig, accelerator, model, num_classes: int) -> StepOptions:
    """Mixup/cutmix, gradient clipping and the EMA, as the recipe asks."""
    mixer = BatchMixer(num_classes, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, seed=cfg.seed,
                       rank=accelerator.process_index)
    ema = None
    if cfg.model_ema:
        decay = ema_decay(cfg.model_ema_decay, world_size=accelerator.num_processes, batch_size=cfg.batch_size,
                          ema_steps=cfg.model_ema_steps, epochs=cfg.epochs)
        ema = ModelEMA(accelerator.unwrap_model(model), decay=decay, every=cfg.model_ema_steps,
                       warmup_epochs=cfg.warmup_epochs)
    return StepOptions(mixer=mixer if mixer.active else None, clip_grad_norm=cfg.clip_grad_norm, ema=ema)


def _write_reports(output_dir: Path, results: dict, model_config: dict) -> None:
    """results.json, results.md, curves.png and the model card: the folder is complete after every epoch."""
    ckpt.write_json(output_dir / "results.json", results)
    write_results_md(output_dir, results)
    if results.get("history"):
        plot_curves(results["history"], output_dir / "curves.png",
                    f"{results['arch']} on {results['dataset']}, {results['num_processes']}p {results['device_name']}")
    if (output_dir / ckpt.WEIGHTS).exists():
        (output_dir / "README.md").write_text(model_card(results, model_config))


def _finish(cfg: TrainConfig, accelerator, output_dir: Path, results: dict, model_config: dict, log) -> None:
    results["status"] = "finished"
    if accelerator.is_main_process:
        _write_reports(output_dir, results, model_config)
    accelerator.wait_for_everyone()
    log(f"Acc@1 {results.get('acc1', 0):.3f}  Acc@5 {results.get('acc5', 0):.3f}  FPS {results.get('fps', 0):.1f}  "
        f"({results['num_processes']}p {results['device']} {results['mixed_precision']}, "
        f"global batch {results['global_batch_size']}) -> {output_dir / 'results.json'}")
    accelerator.end_training()
    if cfg.push_to_hub and accelerator.is_main_process:
        log(f"pushed {output_dir} to {cfg.hub_model_id}: {push_to_hub(output_dir, cfg.hub_model_id, cfg.hub_private)}")


def _profiler(cfg: TrainConfig, accelerator, output_dir: Path, first: bool):
    """--prof: OUTPUT/profile/profile_<rank>.json, a Chrome trace (chrome://tracing, Perfetto) of steps 3-5."""
    if not (cfg.prof and first):
        return nullcontext()
    activities = ["cpu"] + (["cuda"] if accelerator.device.type == "cuda" else [])
    handler = ProfileKwargs(activities=activities, schedule_option={"wait": 1, "warmup": 1, "active": 3, "repeat": 1},
                            output_trace_dir=str(output_dir / "profile"), record_shapes=True)
    return accelerator.profile(handler)


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
