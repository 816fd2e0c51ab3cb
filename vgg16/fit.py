"""The epoch loop of a training run: train, evaluate, checkpoint, export and report after every epoch, resume where
a checkpoint stood, and stop at a step every process agrees on when a signal asks.

`EpochLoop` holds what the loop shares between its steps (the run's state, its settings, the scheduler); the
runner builds the model, data and optimizer, prepares them and hands them over (`Training`).
"""

from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from accelerate.utils import ProfileKwargs
import torch
from torch import nn

from . import checkpoint as ckpt
from .card import model_card
from .class_metrics import plot_confusion
from .checkpoint import RunState
from .compiling import compile_counts, compile_note
from .config import TrainConfig
from .data.inputs import Inputs
from .ema import ModelEMA, ema_decay
from .engine import (EpochPlan, StepLogger, StepOptions, Trainee, evaluate, normalised_batches, train_one_epoch,
                     validation_line)
from .finetune import Freezing
from .hub import BackgroundPusher
from .launch import assert_processes_agree, synchronize
from .metrics import ThroughputMeter
from .model import ModelConfig
from .mixing import BatchMixer
from .optim import position_scheduler, run_scheduler
from .preempt import Preempted, StopAgreement
from .report import RunResults, plot_curves, write_results_md
from .resume_check import RunSettings, check_resume, replan_schedule


# With --best-metric, where the last epoch's weights are exported beside the best epoch's.
LAST_EXPORT = "last"


def better(metric: str, figures: dict, best: Optional[dict]) -> bool:
    """Whether this epoch's weights replace the exported ones: always for "last", else when its figure beats the
    best epoch's so far (val_loss: lower), the earlier epoch keeping a tie."""
    if metric == "last" or best is None or best.get("metric") != metric:
        return True
    return figures[metric] < best[metric] if metric == "val_loss" else figures[metric] > best[metric]


def write_reports(output_dir: Path, run_results: RunResults, model_config: ModelConfig) -> None:
    """results.json, results.md, curves.png and the model card: the folder is complete after every epoch."""
    results = run_results.to_dict()
    ckpt.write_json(output_dir / "results.json", results)
    write_results_md(output_dir, results)
    if results.get("history"):
        plot_curves(results["history"], output_dir / "curves.png",
                    f"{results['arch']} on {results['dataset']}, {results['num_processes']}p {results['device_name']}")
    if results.get("confusion"):
        plot_confusion(results["confusion"], model_config.class_names, output_dir / "confusion.png",
                       f"{results['arch']} on {results['dataset']}, epoch {results.get('epochs', 0)}")
    if (output_dir / ckpt.WEIGHTS).exists():
        (output_dir / "README.md").write_text(model_card(results, model_config.to_dict()))


def step_options(cfg: TrainConfig, accelerator, model, num_classes: int, freezing: Optional[Freezing]) -> StepOptions:
    """Mixup/cutmix, gradient clipping, the EMA and the frozen layers, as the recipe and options ask."""
    mixer = BatchMixer(num_classes, mixup_alpha=cfg.mixup_alpha, cutmix_alpha=cfg.cutmix_alpha, seed=cfg.seed,
                       rank=accelerator.process_index)
    ema = None
    if cfg.model_ema:
        decay = ema_decay(cfg.model_ema_decay, world_size=accelerator.num_processes, batch_size=cfg.batch_size,
                          ema_steps=cfg.model_ema_steps, epochs=cfg.epochs)
        ema = ModelEMA(accelerator.unwrap_model(model), decay=decay, every=cfg.model_ema_steps,
                       warmup_epochs=cfg.warmup_epochs)
    return StepOptions(mixer=mixer if mixer.active else None, clip_grad_norm=cfg.clip_grad_norm, ema=ema,
                       freezing=freezing)


def _profiler(cfg: TrainConfig, accelerator, output_dir: Path, first: bool):
    """--prof: OUTPUT/profile/profile_<rank>.json, a Chrome trace (chrome://tracing, Perfetto) of steps 3-5."""
    if not (cfg.prof and first):
        return nullcontext()
    activities = ["cpu"] + (["cuda"] if accelerator.device.type == "cuda" else [])
    handler = ProfileKwargs(activities=activities, schedule_option={"wait": 1, "warmup": 1, "active": 3, "repeat": 1},
                            output_trace_dir=str(output_dir / "profile"), record_shapes=True)
    return accelerator.profile(handler)


@dataclass(frozen=True)
class Training:
    """What a run trains, prepared by the runner (`accelerator.prepare`)."""
    model: nn.Module
    optimizer: Any
    train_loader: Any
    val_loader: Any
    batch_input: Callable
    """What a loader's batch goes through before the model: the normalisation, or nothing once the model does it
    itself (--compile)."""
    freezing: Optional[Freezing] = None
    class_weights: Optional[torch.Tensor] = None
    """--class-weights: the loss's weight per class, on the device."""


class EpochLoop:
    """One run's epochs, from its start (or the checkpoint it resumes) to its last; `results` is updated in place
    and written after every epoch."""

    def __init__(self, cfg: TrainConfig, accelerator, training: Training, *, inputs: Inputs, model_config: ModelConfig,
                 results: RunResults, log: Callable[[str], None], resume_dir: Optional[Path] = None,
                 stop: Optional[StopAgreement] = None):
        self.cfg, self.accelerator, self.inputs, self.resume_dir = cfg, accelerator, inputs, resume_dir
        self.model, self.optimizer, self.normalize = training.model, training.optimizer, training.batch_input
        self.train_loader, self.val_loader = training.train_loader, training.val_loader
        self.class_weights = training.class_weights
        self.model_config, self.results, self.log, self.stop = model_config, results, log, stop
        self.exported = model_config
        """config.json of the weights last exported (the model's, or its EMA's)."""
        self.output_dir = Path(cfg.output_dir)
        self.checkpoints = self.output_dir / "checkpoints"
        self.steps_per_epoch = len(self.train_loader) // cfg.grad_accum
        self.scheduler = run_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        self.settings = RunSettings(
            per_process_batch=cfg.batch_size, processes=accelerator.num_processes, grad_accum=cfg.grad_accum,
            seed=cfg.seed, train_images=inputs.train_images, data_fingerprint=inputs.data_fingerprint,
            steps_per_epoch=self.steps_per_epoch, epochs=cfg.epochs, lr=self.optimizer.defaults["lr"],
            lr_scheduler=cfg.lr_scheduler, lr_update=cfg.lr_update, warmup_epochs=cfg.warmup_epochs,
            recipe=cfg.recipe, arch=cfg.arch, sampler=inputs.sampler)
        self.options = step_options(cfg, accelerator, self.model, model_config.num_classes, training.freezing)
        if self.options.ema is not None:
            accelerator.register_for_checkpointing(self.options.ema)  # before load_state: the average resumes too
        self.state = self._start()  # during an epoch, state.epoch is that epoch (it moves on when the epoch ends)

    def _start(self) -> RunState:
        """Where training starts: a fresh run, the checkpoint --resume names, or --start-epoch."""
        cfg, state, resume = self.cfg, RunState(), self.resume_dir
        if resume:
            planned_base_lrs = list(self.scheduler.base_lrs)  # a checkpoint's scheduler brings the lr it was saved with
            saved_state = ckpt.read_trainer_state(resume)
            saved = RunSettings.from_dict(saved_state.get("settings"))
            changed = check_resume(str(resume), saved, self.settings, mid_epoch=saved_state.get("step_in_epoch", 0) > 0,
                                   epoch_checkpoint=ckpt.newest_epoch_checkpoint(self.output_dir))
            state = ckpt.load_training_state(self.accelerator, resume, self.model, self.scheduler)
            self.log(f"resumed from {resume}: epoch {state.epoch + 1}, step {state.step_in_epoch} of "
                     f"{self.steps_per_epoch} ({state.global_step} optimizer steps done)")
            if changed:
                self.log("note: " + replan_schedule(self.scheduler, planned_base_lrs, saved, self.settings, changed,
                                                    epoch=state.epoch, step_in_epoch=state.step_in_epoch))
            assert_processes_agree(self.accelerator, "the epoch and step to resume at",
                                   (state.epoch, state.step_in_epoch, state.global_step))
        if cfg.start_epoch is not None:
            state = RunState(cfg.start_epoch, 0, cfg.start_epoch * self.steps_per_epoch, state.best_acc1,
                             best=state.best)
            position_scheduler(self.scheduler, state.global_step)
        return state

    def _save(self, state: RunState) -> Path:
        extra = {"scheduler": self.scheduler.state_dict(), "model": self.exported.to_dict(),
                 "settings": self.settings.to_dict(),
                 **self.inputs.checkpoint_record()}
        return ckpt.save_training_state(self.accelerator, self.checkpoints, state, extra, keep=self.cfg.keep_checkpoints)

    def _after_step(self, step_in_epoch: int, global_step: int, ensure_finite) -> bool:
        """After each optimizer step but an epoch's last: the stop check, then --checkpoint-every."""
        if self.stop is not None and self.stop.stop_now():
            return True  # the checkpoint is written once the epoch's loop has ended
        if self.cfg.checkpoint_every and global_step % self.cfg.checkpoint_every == 0:
            ensure_finite()  # never save a model that has seen an inf/nan loss
            self._save(RunState(self.state.epoch, step_in_epoch, global_step, self.state.best_acc1,
                                best=self.state.best))
        return False

    def _preempted(self, saved: Path) -> Preempted:
        signal_name, step = self.stop.request.signal_name, self.state.global_step
        self.results.update(status="preempted", steps=step,
                            stopped={"signal": signal_name, "step": step, "checkpoint": str(saved)})
        if self.accelerator.is_main_process:
            write_reports(self.output_dir, self.results, self.exported)
        return Preempted(signal_name, step, str(saved))

    def run(self, pusher: Optional[BackgroundPusher] = None) -> None:
        """The epochs; `pusher` uploads the folder after every epoch (--hub-strategy every_save)."""
        cfg, accelerator, state = self.cfg, self.accelerator, self.state
        meter = ThroughputMeter(lambda: synchronize(accelerator.device))
        # Takes mixup's soft targets too; --class-weights weighs each target class's term.
        criterion = nn.CrossEntropyLoss(weight=self.class_weights, label_smoothing=cfg.label_smoothing)
        trainee = Trainee(self.model, self.optimizer, self.scheduler, criterion)
        if self.results.history is None:
            self.results.history = []
        started, skipped, history = time.time(), 0, self.results.history
        progress = sys.stdout.isatty()  # a bar in a terminal; plain lines in logs (CI, nohup, files)
        start_epoch = state.epoch
        for epoch in range(start_epoch, cfg.epochs):
            remaining = cfg.stop_step_num - state.global_step if cfg.stop_step_num else self.steps_per_epoch
            if remaining <= 0:
                break
            first = state.step_in_epoch if epoch == start_epoch else 0
            loader = self.inputs.epoch_loader(accelerator, self.train_loader, epoch, first * cfg.grad_accum)
            plan = EpochPlan(epoch, cfg.epochs, min(self.steps_per_epoch - first, remaining), cfg.print_freq,
                             first_step=first, global_step=state.global_step, recipe=cfg.recipe)
            with _profiler(cfg, accelerator, self.output_dir, first=epoch == start_epoch) as profiler:
                batches = normalised_batches(loader, self.inputs.train_prepare, self.normalize)
                logger = StepLogger(accelerator, plan, meter, self.log, progress)
                stats = train_one_epoch(trainee, batches, accelerator, plan, logger, options=self.options,
                                        after_step=self._after_step, profiler=profiler)
            state.global_step += stats["steps"]
            skipped += stats["skipped_steps"]
            finished = first + stats["steps"] == self.steps_per_epoch
            state.epoch, state.step_in_epoch = (epoch + 1, 0) if finished else (epoch, first + stats["steps"])
            if stats["stopped"]:
                raise self._preempted(self._save(state))
            metrics, use_ema, figures = self._evaluate()
            state.best_acc1 = max(state.best_acc1, metrics["acc1"])
            improved = better(cfg.best_metric, figures, state.best)
            if improved:
                state.best = {"epoch": epoch + 1, "metric": cfg.best_metric, **figures}
            saved = self._save(state)
            self._export(self.options.ema.module if use_ema else self.model,
                         self.model_config.exported_as("ema" if use_ema else "model"), improved)
            self.results.update(acc1=metrics["acc1"], acc5=metrics["acc5"], macro_f1=metrics["macro_f1"],
                                balanced_acc=metrics["balanced_acc"], per_class=metrics.get("per_class"),
                                confusion=metrics.get("confusion"), best_acc1=state.best_acc1,
                                val_images=metrics["count"], val_loss=metrics["loss"], train_loss=stats["loss"],
                                fps=meter.fps, epochs=epoch + 1, steps=state.global_step,
                                bad_images=stats["bad_images"] + metrics["bad_images"], fp16_skipped_steps=skipped,
                                train_seconds=round(time.time() - started, 1),
                                exported_weights=self.exported.weights, best=state.best)
            ema_figures = {k: v for k, v in metrics.items() if k.startswith("ema_")}
            compiled = compile_counts() if cfg.compile else {}
            if compiled:
                self.log(compile_note(compiled))
                self.results.update(**compiled)
            history.append({"epoch": epoch + 1, "steps": state.global_step, "train_loss": stats["loss"],
                            "val_loss": metrics["loss"], "acc1": metrics["acc1"], "acc5": metrics["acc5"],
                            "macro_f1": metrics["macro_f1"], "balanced_acc": metrics["balanced_acc"],
                            "fps": meter.epoch_fps, **ema_figures, **compiled})
            self.results.update(**ema_figures)
            accelerator.log({"val/acc1": metrics["acc1"], "val/acc5": metrics["acc5"], "val/loss": metrics["loss"],
                             "val/macro_f1": metrics["macro_f1"], "val/balanced_acc": metrics["balanced_acc"],
                             "train/epoch_loss": stats["loss"], "train/epoch_fps": meter.epoch_fps, "epoch": epoch + 1},
                            step=state.global_step)
            if stats["bad_images"] or metrics["bad_images"]:
                self.log(f"{stats['bad_images']} unreadable training and {metrics['bad_images']} validation image(s) "
                         "skipped this epoch (python -m vgg16.check_data lists them)")
            if accelerator.is_main_process:
                write_reports(self.output_dir, self.results, self.exported)
                if pusher is not None:  # --hub-strategy every_save: the copy is the only wait
                    pusher.submit(self.output_dir, f"epoch {epoch + 1}")
            # A signal during the epoch's last step or its evaluation: that epoch is complete and saved; stop here.
            if epoch + 1 < cfg.epochs and self.stop is not None and self.stop.stop_now():
                raise self._preempted(saved)

    def _export(self, weights: nn.Module, config: ModelConfig, improved: bool) -> None:
        """OUTPUT/model.safetensors: the last epoch's weights, or with --best-metric the best epoch's so far, the
        last epoch's then in OUTPUT/last/."""
        if improved:
            self.exported = config
            ckpt.export_model(self.accelerator, weights, self.output_dir, config.to_dict())
        if self.cfg.best_metric != "last":
            ckpt.export_model(self.accelerator, weights, self.output_dir / LAST_EXPORT, config.to_dict())

    def _evaluate(self) -> tuple[dict, bool, dict]:
        """The model's validation metrics (plus ema_acc1/ema_acc5 with --model-ema), whether the EMA is the
        better one, which is then the model exported, and the exported weights' figures (for --best-metric); the
        per-class figures are the exported weights'."""
        classes = self.inputs.class_names
        metrics = evaluate(self.model, self.val_loader, self.accelerator, self.normalize, log=self.log,
                           prepare_batch=self.inputs.val_prepare, class_names=classes)
        use_ema = False
        if self.options.ema is not None:
            ema = evaluate(self.options.ema.module, self.val_loader, self.accelerator, self.normalize,
                           prepare_batch=self.inputs.val_prepare, class_names=classes)
            self.log(validation_line(ema, len(classes), label="validation (EMA)"))
            use_ema = ema["acc1"] > metrics["acc1"]
            metrics = {**metrics, "ema_acc1": ema["acc1"], "ema_acc5": ema["acc5"], "ema_macro_f1": ema["macro_f1"],
                       **({k: ema[k] for k in ("per_class", "confusion") if k in ema} if use_ema else {})}
        exported = ema if use_ema else metrics
        figures = {k: exported[k] for k in ("acc1", "acc5", "macro_f1", "balanced_acc")}
        return metrics, use_ema, {**figures, "val_loss": exported["loss"]}
