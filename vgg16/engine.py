"""One training epoch and one evaluation pass, written once against `accelerate.Accelerator`.

Plain functions: they take the objects they use and return dicts. No device-specific calls: the batches arrive on
the right device from Accelerate's prepared loaders, and precision comes from `accelerator.autocast`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, tqdm
from torch import nn

from .ema import ModelEMA
from .finetune import Freezing
from .class_metrics import class_report
from .metrics import ThroughputMeter, new_topk_metric
from .mixing import BatchMixer


class Normalizer:
    """uint8 NCHW images on the device (any memory layout) -> normalised float, contiguous or channels_last.

    Called on the batches, or by the model itself on its input (compiling.normalise_inside: --compile), when the
    batches reach the model as loaded."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        # The layout first, on uint8 (a quarter of the bytes of the floats): the loaders' batches are channels-last
        # in memory (pipeline.stack_images), the model's input need not be.
        x = (images.contiguous(memory_format=self.memory_format).float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


class NonFiniteLoss(RuntimeError):
    """The training loss became inf/nan in fp32/bf16, where no loss scaler can skip the step."""


@dataclass
class EpochPlan:
    epoch: int
    epochs: int
    steps: int
    """Optimizer steps this epoch will run (fewer when --stop-step-num cuts it short or a resume skipped some)."""
    print_freq: int
    first_step: int = 0
    """Optimizer steps of this epoch already done before (a mid-epoch resume)."""
    global_step: int = 0
    """Optimizer steps of the whole run done before this epoch's first step here."""
    recipe: str = ""
    """Shown in the progress line."""


@dataclass
class StepOptions:
    """What a recipe adds to the plain step: batch mixing, gradient clipping, the EMA of the weights, a frozen part."""
    mixer: Optional[BatchMixer] = None
    clip_grad_norm: Optional[float] = None
    ema: Optional[ModelEMA] = None
    freezing: Optional[Freezing] = None


class _NonFiniteWatch:
    """Remembers, on the device, the first step whose loss was inf/nan: exact, without a host sync per step."""

    NONE = 2**62

    def __init__(self, device):
        self.first = torch.full((), self.NONE, dtype=torch.int64, device=device)

    def update(self, loss: torch.Tensor, global_step: int) -> None:
        bad = ~torch.isfinite(loss.detach())
        self.first = torch.where(bad, torch.minimum(self.first, torch.full_like(self.first, global_step)), self.first)

    def check(self, epoch: int) -> None:
        """Raise if any step so far was non-finite (a host sync: call at print steps and before saving)."""
        step = int(self.first)
        if step != self.NONE:
            raise NonFiniteLoss(f"the training loss became inf/nan at step {step} (epoch {epoch + 1}); nothing was "
                                "saved after it. Lower --lr or add --warmup-epochs, then --resume auto")


@dataclass
class Trainee:
    """What one optimizer step changes: the model through its optimizer, the lr through its scheduler."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    criterion: nn.Module


def normalised_batches(loader: Iterable, prepare_batch: Callable, normalize: Callable) -> Iterator[tuple]:
    """(normalised float images, labels, bad) on the device from a prepared loader; `prepare_batch` turns a loader
    batch into (uint8 images, labels, bad) there (--gpu-decode decodes in it)."""
    for batch in loader:
        images, labels, bad = prepare_batch(batch)
        yield normalize(images), labels, bad


class StepLogger:
    """An epoch's progress: the loss summed on the device over a window of --print-freq steps (one host sync per
    window), shown as a bar in a terminal or a line in logs, and sent to Accelerate's trackers; the throughput
    meter counts every step."""

    def __init__(self, accelerator: Accelerator, plan: EpochPlan, meter: ThroughputMeter, log: Callable[[str], None],
                 progress: bool = False):
        self.accelerator, self.plan, self.meter, self.log, self.progress = accelerator, plan, meter, log, progress
        self.where = f"epoch {plan.epoch + 1}/{plan.epochs}" + (f" [{plan.recipe}]" if plan.recipe else "")
        self.window_sum = torch.zeros((), device=accelerator.device)
        self.window_micro = 0
        self.bar = tqdm(total=plan.first_step + plan.steps, initial=plan.first_step, disable=not progress,
                        desc=self.where, main_process_only=True, dynamic_ncols=True)
        meter.begin_epoch(plan.steps)

    def micro_step(self, loss: torch.Tensor) -> None:
        self.window_sum += loss.detach()
        self.window_micro += 1

    def optimizer_step(self, steps: int, images: int, lr: float, before_sync: Callable[[], None]) -> None:
        """After the epoch's `steps`-th optimizer step, which saw `images` images over all processes;
        `before_sync` runs first at a print step (the non-finite check)."""
        self.meter.step(images)
        self.bar.update(1)
        plan = self.plan
        if not (steps % plan.print_freq == 0 or steps == plan.steps):
            return
        before_sync()
        mean_loss = (self.window_sum / self.window_micro).item()  # the one host sync, every print_freq steps
        fps = self.meter.window_fps()
        shown = f"loss {mean_loss:.4f}  lr {lr:.5f}" + (f"  fps {fps:.1f}" if fps else "")
        if self.progress:
            self.bar.set_postfix_str(shown)
        else:
            self.log(f"{self.where}  step {plan.first_step + steps}/{plan.first_step + plan.steps}  {shown}")
        self.accelerator.log({"train/loss": mean_loss, "train/lr": lr, **({"train/fps": fps} if fps else {})},
                             step=plan.global_step + steps)
        self.window_sum.zero_()
        self.window_micro = 0

    def close(self) -> None:
        self.bar.close()
        self.meter.end_epoch()


def train_one_epoch(trainee: Trainee, batches: Iterable, accelerator: Accelerator, plan: EpochPlan,
                    logger: StepLogger, options: Optional[StepOptions] = None, after_step: Optional[Callable] = None,
                    profiler=None) -> dict:
    """Run `plan.steps` optimizer steps over `batches` (normalised images, labels, bad: `normalised_batches`);
    return mean loss (over all processes), steps, images, bad images and fp16-skipped steps.

    `after_step(step_in_epoch, global_step, ensure_finite) -> stop` runs after each optimizer step but an epoch's
    last (mid-epoch checkpoints, the stop check); before saving anything it calls `ensure_finite()`, which raises if
    a loss was inf/nan. When it returns True the epoch ends there ("stopped" in the result).
    options: mixup/cutmix (the loss then takes soft targets), gradient clipping, EMA update, frozen layers.
    """
    model, optimizer = trainee.model, trainee.optimizer
    options = options or StepOptions()
    model.train()
    frozen = options.freezing is not None and options.freezing.hold(plan.epoch)
    # Summed on the device: no host sync per step.
    loss_sum = torch.zeros((), device=accelerator.device)
    bad_sum = torch.zeros((), dtype=torch.int64, device=accelerator.device)
    # fp16's scaler skips steps with inf/nan gradients itself; in fp32/bf16 a non-finite loss ends the run.
    watch = _NonFiniteWatch(accelerator.device) if accelerator.mixed_precision != "fp16" else None
    ensure_finite = (lambda: watch.check(plan.epoch)) if watch is not None else (lambda: None)
    steps = micro = skipped = step_images = images_seen = 0
    stopped = False
    mixer, ema = options.mixer, options.ema
    ema_source = accelerator.unwrap_model(model) if ema is not None else None
    first_micro = plan.first_step * accelerator.gradient_accumulation_steps
    for inputs, labels, bad in batches:
        targets = labels
        if mixer is not None:  # soft targets: CrossEntropyLoss takes class probabilities as well
            if not inputs.is_floating_point():  # uint8 when the model normalises its input (--compile)
                inputs = inputs.float()
            inputs, targets = mixer(inputs, labels, epoch=plan.epoch, micro_step=first_micro + micro)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = trainee.criterion(model(inputs), targets)
            accelerator.backward(loss)
            if frozen and accelerator.sync_gradients:
                options.freezing.drop_gradients()  # after DDP's all-reduce, before clipping and the step
            if options.clip_grad_norm is not None and accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), options.clip_grad_norm)  # unscales fp16 first
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        step_images += inputs.shape[0] * accelerator.num_processes  # every process's batch has this size
        loss_sum += loss.detach()
        logger.micro_step(loss)
        bad_sum += bad.sum()
        if watch is not None:
            watch.update(loss, plan.global_step + steps + 1)
        if not accelerator.sync_gradients:
            continue
        steps += 1
        if accelerator.optimizer_step_was_skipped:  # fp16 overflow (Accelerate reads the scaler anyway)
            skipped += 1
        else:
            trainee.scheduler.step()
        if ema is not None:
            ema.after_step(ema_source, step_in_epoch=plan.first_step + steps - 1, epoch=plan.epoch)
        logger.optimizer_step(steps, step_images, optimizer.param_groups[0]["lr"], ensure_finite)
        images_seen, step_images = images_seen + step_images, 0
        if profiler is not None:
            profiler.step()
        if steps >= plan.steps:
            break
        if after_step is not None and after_step(plan.first_step + steps, plan.global_step + steps, ensure_finite):
            stopped = True
            break
    logger.close()
    ensure_finite()
    mean = accelerator.reduce(loss_sum / max(micro, 1), reduction="mean")
    return {"loss": float(mean), "steps": steps, "bad_images": int(accelerator.reduce(bad_sum, reduction="sum")),
            "skipped_steps": skipped, "images": images_seen, "stopped": stopped}


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, normalize: Callable,
             topk: int = 5, log: Optional[Callable[[str], None]] = None, prepare_batch: Callable = tuple,
             class_names: Optional[list] = None) -> dict:
    """Top-1/top-5 over the whole validation set, each image counted once whatever the process count; with
    `class_names`, also macro-F1 and balanced accuracy, and in the main process's result the per-class figures
    and the confusion matrix (`class_metrics.class_report`)."""
    model.eval()
    metric = new_topk_metric()
    loss_sum, count, bad_images = 0.0, 0, 0
    top1, truth = [], []
    for batch in loader:
        images, labels, bad = prepare_batch(batch)
        with accelerator.autocast():
            logits = model(normalize(images))
        losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        ranked = logits.topk(min(topk, logits.shape[1]), dim=1).indices
        # gather_for_metrics drops the samples Accelerate repeated to give every process a full last batch.
        ranked, labels, losses, bad = accelerator.gather_for_metrics((ranked, labels, losses, bad))
        if accelerator.is_main_process:
            # An unreadable image's stand-in (bad 1) must not be counted twice; a stream's padding (-1) not at all.
            keep = bad == 0
            bad_images += int((bad > 0).sum())
            metric.add_batch(predictions=ranked[keep].cpu().tolist(), references=labels[keep].cpu().tolist())
            top1.append(ranked[keep][:, 0].cpu())
            truth.append(labels[keep].cpu())
            loss_sum += float(losses[keep].sum())
            count += int(keep.sum())
    result, classes = None, {}
    if accelerator.is_main_process:
        result = metric.compute()
        result["loss"] = loss_sum / count if count else float("nan")
        result["bad_images"] = bad_images
        if class_names is not None:
            classes = class_report(torch.cat(truth).numpy() if truth else np.zeros(0, np.int64),
                                   torch.cat(top1).numpy() if top1 else np.zeros(0, np.int64), class_names)
            result.update(macro_f1=classes.pop("macro_f1"), balanced_acc=classes.pop("balanced_acc"))
    # Every process returns the same figures; the per-class ones (a matrix of classes^2) stay in the main process,
    # the only one that writes them.
    result = {**broadcast_object_list([result])[0], **classes}
    if log:
        log(validation_line(result, len(class_names) if class_names else None))
    return result


def validation_line(result: dict, num_classes: Optional[int], label: str = "validation") -> str:
    """'validation: acc1 .. macro-F1 ..  acc5 ..  over N images'; top-5 only where there are more than 5 classes
    (with 5 or fewer it is 100% by construction)."""
    return (f"{label}: acc1 {result['acc1']:.3f}"
            + (f"  macro-F1 {result['macro_f1']:.3f}" if "macro_f1" in result else "")
            + (f"  acc5 {result['acc5']:.3f}" if num_classes is None or num_classes > 5 else "")
            + f"  over {result['count']} images")
