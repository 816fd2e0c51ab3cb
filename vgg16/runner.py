"""A whole run: options -> config -> Accelerator -> data, model, optimizer -> prepare -> epochs -> results.json.

`main(argv)` is the command line (train_vgg16.py calls it); `run(given)` is the same for code and tests. The
config is resolved twice, by one function (vgg16/resolve.py): before anything is loaded (every rule checked at
once; the launch options, which no weights or data change, start the processes), then with what the starting
weights and the data say, for the run itself. That second config is saved as OUTPUT/run.yaml and nothing after
it changes a value.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch
from accelerate.utils import set_seed

from . import checkpoint as ckpt
from .cli import read_command
from .config import TrainConfig
from .config_file import write_run_config
from .data.balance import describe_weights, loss_weights
from .data.inputs import Inputs, build_inputs, load_data
from .data.sources import ImageData
from .compiling import compile_with_input
from .engine import Normalizer, NonFiniteLoss, evaluate
from .errors import RunFailure, SaidByMainProcess, UsageError, lost_a_peer, one_line, process_label
from .finetune import Freezing, freezing_for, start_model, start_weights
from .fit import EpochLoop, Training, write_reports
from .hub import BackgroundPusher, PushFailed, push_to_hub
from .launch import default_workers, launch_facts, make_accelerator, use_cpu_cores
from .model import ModelConfig, count_parameters
from .optim import build_optimizer, use_fused
from .report import RunResults
from .preempt import EXIT_PREEMPTED, Preempted, StopAgreement, StopRequest
from .resolve import GivenOptions, RunFacts, resolve_config
from .run_lock import take_output_dir
from .weights import Weights

# The linear scaling rule (Goyal et al. 2017): lr grows with the global batch, relative to a batch of 256.
LR_REFERENCE_BATCH = 256


def run(given: GivenOptions) -> dict:
    early = resolve_config(given)  # every rule checked before anything is loaded; its launch options are final
    # Installed first: a signal during start-up is kept and honoured at the first step boundary.
    request = StopRequest().install() if not early.evaluate else None
    lock = None
    try:
        accelerator = make_accelerator(early)
        lock = take_output_dir(accelerator, Path(early.output_dir))
        if lock is not None and lock.note:
            accelerator.print(f"note: {lock.note}", flush=True)
        stop = StopAgreement(accelerator, request) if request is not None else None
        try:
            return _run(given, early, accelerator, stop)
        except Preempted:
            accelerator.end_training()
            raise
    finally:
        if lock is not None:
            lock.release()
        if request is not None:
            request.restore()


def _run(given: GivenOptions, early: TrainConfig, accelerator, stop: Optional[StopAgreement]) -> dict:
    log = lambda message: accelerator.print(message, flush=True)  # noqa: E731 - main process only
    output_dir = Path(early.output_dir)
    resume_dir = ckpt.resolve_resume(early.resume, output_dir, early.evaluate, log)
    set_seed(early.seed)  # before the model is built: the seed decides the initial weights
    weights = start_weights(early, accelerator, arch_given=given.values.get("arch"), resume_dir=resume_dir)
    data = load_data(early, accelerator)
    cfg = resolve_config(given, _facts(weights, data, accelerator))
    if accelerator.is_main_process:
        write_run_config(cfg, output_dir, given.command)
    accelerator.init_trackers("vgg16", config={k: v for k, v in cfg.to_dict().items()
                                               if isinstance(v, (int, float, str, bool))})
    inputs = build_inputs(cfg, data, accelerator, _stream_state(cfg, resume_dir))
    model, started_from = start_model(cfg, class_names=inputs.class_names, weights=weights, resume_dir=resume_dir)
    freezing = freezing_for(model, cfg.freeze_features, 0 if cfg.evaluate else cfg.freeze_epochs)
    model_config = ModelConfig.for_run(cfg, class_names=inputs.class_names, weights=weights,
                                       started_from=started_from, frozen=freezing.describe() if freezing else None)
    if inputs.val_images < accelerator.num_processes:
        raise UsageError(f"{inputs.val_images} validation image(s) for {accelerator.num_processes} processes: every "
                         "process needs at least one; launch fewer processes or use a larger validation split")
    lr = _lr(cfg, accelerator.num_processes)
    _say_start(cfg, accelerator, inputs=inputs, model=model, model_config=model_config, lr=lr, notes=given.notes,
               log=log)
    results = RunResults.start(cfg, dataset=inputs.name, num_classes=len(inputs.class_names),
                               train_images=inputs.train_images, launch=launch_facts(accelerator), lr=lr,
                               pretrained=weights.source if weights else None, command=given.command)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    batch_input = Normalizer(model_config.mean, model_config.std, accelerator.device, channels_last=cfg.channels_last)
    if cfg.compile:  # before accelerate.prepare wraps it in DDP (compiling.py says why)
        batch_input = compile_with_input(model, batch_input, backend=cfg.compile_backend, mode=cfg.compile_mode)
    if cfg.evaluate:
        _, val_loader = inputs.prepared_loaders(accelerator, train=False)
        metrics = evaluate(accelerator.prepare(model), val_loader, accelerator, batch_input, log=log,
                           prepare_batch=inputs.val_prepare, class_names=inputs.class_names)
        results.update(acc1=metrics["acc1"], acc5=metrics["acc5"], macro_f1=metrics["macro_f1"],
                       balanced_acc=metrics["balanced_acc"], per_class=metrics.get("per_class"),
                       confusion=metrics.get("confusion"), val_images=metrics["count"],
                       val_loss=metrics["loss"], bad_images=metrics["bad_images"], fps=0.0, epochs=0, steps=0,
                       evaluated=str(resume_dir or cfg.pretrained))
    else:
        training = _prepare_training(cfg, accelerator, model=model, inputs=inputs, lr=lr, batch_input=batch_input,
                                     freezing=freezing)
        _train(cfg, accelerator, EpochLoop(cfg, accelerator, training, inputs=inputs, model_config=model_config,
                                           results=results, log=log, resume_dir=resume_dir, stop=stop))
    if stop is not None:
        stop.finish()  # before end_training destroys the process group
    _finish(cfg, accelerator, results=results, model_config=model_config, log=log)
    return results.to_dict()


def _facts(weights: Optional[Weights], data: ImageData, accelerator) -> RunFacts:
    """What the weights, the data and the launch decide of the run's options (vgg16.resolve)."""
    return RunFacts(weights_arch=weights.arch if weights else None, weights_sizes=weights.sizes if weights else None,
                    weights_interpolation=weights.interpolation if weights else None, small_images=data.small_images,
                    mixed_precision=accelerator.mixed_precision,
                    workers=default_workers(None, accelerator.num_processes))


def _stream_state(cfg: TrainConfig, resume_dir: Optional[Path]) -> Optional[dict]:
    """The `streaming` record of the checkpoint a --streaming run resumes from."""
    if not (cfg.streaming and resume_dir and not cfg.evaluate):
        return None
    return ckpt.read_trainer_state(resume_dir).get("streaming")


def _lr(cfg: TrainConfig, processes: int) -> float:
    """The lr used: --lr, times global batch / 256 with --lr-scale-by-batch."""
    global_batch = cfg.batch_size * processes * cfg.grad_accum
    return cfg.lr * global_batch / LR_REFERENCE_BATCH if cfg.lr_scale_by_batch else cfg.lr


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


def _say_start(cfg: TrainConfig, accelerator, *, inputs: Inputs, model, model_config: ModelConfig, lr: float,
               notes: tuple, log) -> None:
    """The start-up lines: notes, the model and data, the launch, the recipe as resolved."""
    threads_note = use_cpu_cores(accelerator)
    for note in (*notes, *inputs.notes, *([threads_note] if threads_note else [])):
        log(f"note: {note}")
    processes, mc = accelerator.num_processes, model_config
    global_batch = cfg.batch_size * processes * cfg.grad_accum
    log(f"{cfg.arch} ({mc.head} head, {count_parameters(model) / 1e6:.1f}M parameters) on {inputs.name}: "
        f"{inputs.train_images} train / {inputs.val_images} val images, {mc.num_classes} classes, {cfg.image_size} px")
    if mc.started_from:
        log(f"pretrained: {mc.started_from}; input mean {_rounded(mc.mean)} std {_rounded(mc.std)}")
    log(f"{processes} process(es) on {accelerator.device.type}, {accelerator.mixed_precision} precision, "
        f"global batch {global_batch} ({cfg.batch_size} x {processes} x {cfg.grad_accum}), "
        f"{cfg.workers} workers per process")
    log(f"recipe {cfg.recipe}: {cfg.opt} lr {lr:g}"
        + (f" (--lr {cfg.lr:g} x global batch {global_batch} / {LR_REFERENCE_BATCH}, linear scaling)"
           if cfg.lr_scale_by_batch else "")
        + f", {cfg.lr_scheduler} schedule, {cfg.epochs} epochs; train crop {cfg.image_size}, val "
        f"{cfg.val_resize_size} -> {cfg.val_crop_size}"
        + "".join(f", {name}" for name, on in _extras(cfg) if on)
        + (f", frozen: {mc.frozen}" if mc.frozen else "")
        + (f", features at lr x {cfg.backbone_lr_scale:g}" if cfg.backbone_lr_scale != 1.0 else ""))


def _prepare_training(cfg: TrainConfig, accelerator, *, model, inputs: Inputs, lr: float, batch_input,
                      freezing: Optional[Freezing]) -> Training:
    """The optimizer for `model`, then the model, optimizer and loaders prepared by Accelerate; the loss's class
    weights."""
    weights = loss_weights(cfg.class_weights, inputs.class_counts, inputs.class_names)
    if weights is not None:
        accelerator.print(f"note: --class-weights {cfg.class_weights}: "
                          f"{describe_weights(weights, inputs.class_names)}", flush=True)
    optimizer = build_optimizer(model, opt=cfg.opt, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                norm_weight_decay=cfg.norm_weight_decay, bias_weight_decay=cfg.bias_weight_decay,
                                backbone_lr_scale=cfg.backbone_lr_scale,
                                fused=use_fused(accelerator.device.type, accelerator.mixed_precision))
    model, optimizer = accelerator.prepare(model, optimizer)
    train_loader, val_loader = inputs.prepared_loaders(accelerator)
    return Training(model=model, optimizer=optimizer, train_loader=train_loader, val_loader=val_loader,
                    batch_input=batch_input, freezing=freezing,
                    class_weights=torch.tensor(weights, dtype=torch.float32, device=accelerator.device)
                    if weights is not None else None)


def _train(cfg: TrainConfig, accelerator, loop: EpochLoop) -> None:
    """The epochs, with --hub-strategy every_save's background uploads around them."""
    pusher = BackgroundPusher(cfg.hub_model_id, cfg.hub_private, loop.log) \
        if cfg.hub_strategy == "every_save" and accelerator.is_main_process else None
    try:
        loop.run(pusher)
    finally:
        if pusher is not None:
            pusher.close()


def _finish(cfg: TrainConfig, accelerator, *, results: RunResults, model_config: ModelConfig, log) -> None:
    output_dir = Path(cfg.output_dir)
    results.status = "finished"
    if accelerator.is_main_process:
        write_reports(output_dir, results, model_config.exported_as(results.exported_weights))
    accelerator.wait_for_everyone()
    log(f"Acc@1 {results.acc1 or 0:.3f}  macro-F1 {results.macro_f1 or 0:.3f}  "
        + (f"Acc@5 {results.acc5 or 0:.3f}  " if results.num_classes > 5 else "") + f"FPS {results.fps or 0:.1f}  "
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


# Exit codes (docs/faults.md): a usage error 2, a failure while running 1, a preemption 75 (EX_TEMPFAIL).
EXIT_FAILED, EXIT_USAGE = 1, 2


def main(argv: Optional[Sequence[str]] = None) -> int:
    debug = "--debug" in (sys.argv[1:] if argv is None else argv)
    try:
        run(read_command(argv))
    except SaidByMainProcess:
        return EXIT_USAGE
    except Preempted as e:
        sys.stdout.write(f"{process_label()}{e}\n")  # one write: N processes share the pipe
        sys.stdout.flush()
        return EXIT_PREEMPTED
    except (UsageError, RunFailure, NonFiniteLoss, PushFailed) as e:
        if debug:
            raise
        # Before the process group forms, a UsageError is the launch's or the command line's, the same in every
        # process: the first process of each machine says it, instead of N copies.
        if not (isinstance(e, UsageError) and not torch.distributed.is_initialized()
                and os.environ.get("LOCAL_RANK", "0") != "0"):
            _say_error(f"{process_label()}{one_line(e)}")
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - only a lost peer is answered here; anything else keeps its traceback
        cause = lost_a_peer(e)
        if debug or not cause:
            raise
        _say_error(f"{process_label()}another process of this job ended, so this one stops too ({cause}); "
                   "that process's own error line says why (a process killed by a signal, or a lost machine, has none)")
        return EXIT_FAILED
    return 0


if __name__ == "__main__":  # accelerate launch -m vgg16.runner ... (an installed package has no train_vgg16.py)
    sys.exit(main())
