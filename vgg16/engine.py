"""One training epoch and one evaluation pass, written once against `accelerate.Accelerator`.

Plain functions: they take the objects they use and return dicts. No device-specific calls: the batches arrive on
the right device from Accelerate's prepared loaders, and precision comes from `accelerator.autocast`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list
from torch import nn

from .metrics import ThroughputMeter, new_topk_metric


class Normalizer:
    """uint8 NCHW on the device -> normalised float, optionally channels_last."""

    def __init__(self, mean, std, device, channels_last: bool = False):
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1) * 255
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.float() - self.mean) / self.std
        return x.contiguous(memory_format=self.memory_format)


class NonFiniteLoss(RuntimeError):
    """The training loss became inf/nan in fp32/bf16, where no loss scaler can skip the step."""


@dataclass
class EpochPlan:
    epoch: int
    epochs: int
    steps: int
    """Optimizer steps this epoch will run (fewer than the loader's when --stop-step-num cuts it short)."""
    print_freq: int


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, criterion: nn.Module, accelerator: Accelerator,
                    normalize: Normalizer, meter: ThroughputMeter, plan: EpochPlan,
                    log: Callable[[str], None], profiler=None, scaler_checks_nonfinite: bool = False) -> dict:
    """Run `plan.steps` optimizer steps; return the mean loss (over all processes), steps and images."""
    model.train()
    images_per_micro = loader.total_batch_size if hasattr(loader, "total_batch_size") else loader.batch_size
    loss_sum = torch.zeros((), device=accelerator.device)  # summed on the device: no host sync per step
    window_sum = torch.zeros((), device=accelerator.device)
    window_steps = 0
    steps = micro = 0
    meter.begin_epoch(plan.steps)
    for images, labels in loader:
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss = criterion(model(normalize(images)), labels)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        micro += 1
        loss_sum += loss.detach()
        window_sum += loss.detach()
        if not accelerator.sync_gradients:
            continue
        steps += 1
        window_steps += accelerator.gradient_accumulation_steps
        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: the scaler skipped this step
            scheduler.step()
        meter.step(images_per_micro * accelerator.gradient_accumulation_steps)
        if profiler is not None:
            profiler.step()
        if steps % plan.print_freq == 0 or steps == plan.steps:
            mean_loss = (window_sum / window_steps).item()  # the one host sync, every print_freq steps
            if not math.isfinite(mean_loss) and not scaler_checks_nonfinite:
                raise NonFiniteLoss(f"loss is {mean_loss} by epoch {plan.epoch + 1} step {steps}: lower --lr "
                                    "(or add --warmup-epochs)")
            fps = meter.window_fps()
            log(f"epoch {plan.epoch + 1}/{plan.epochs}  step {steps}/{plan.steps}  loss {mean_loss:.4f}  "
                f"lr {optimizer.param_groups[0]['lr']:.5f}" + (f"  fps {fps:.1f}" if fps else ""))
            window_sum.zero_()
            window_steps = 0
        if steps >= plan.steps:
            break
    meter.end_epoch()
    mean = accelerator.reduce(loss_sum / max(micro, 1), reduction="mean")
    return {"loss": float(mean), "steps": steps, "images": steps * images_per_micro * accelerator.gradient_accumulation_steps}


@torch.no_grad()
def evaluate(model: nn.Module, loader, accelerator: Accelerator, normalize: Normalizer,
             topk: int = 5, log: Optional[Callable[[str], None]] = None) -> dict:
    """Top-1/top-5 over the whole validation set, each image counted once whatever the process count."""
    model.eval()
    metric = new_topk_metric()
    loss_sum, count = 0.0, 0
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(normalize(images))
        losses = nn.functional.cross_entropy(logits.float(), labels, reduction="none")
        ranked = logits.topk(min(topk, logits.shape[1]), dim=1).indices
        # gather_for_metrics drops the samples Accelerate repeated to give every process a full last batch.
        ranked, labels, losses = accelerator.gather_for_metrics((ranked, labels, losses))
        if accelerator.is_main_process:
            metric.add_batch(predictions=ranked.cpu().tolist(), references=labels.cpu().tolist())
            loss_sum += float(losses.sum())
            count += len(labels)
    result = None
    if accelerator.is_main_process:
        result = metric.compute()
        result["loss"] = loss_sum / count if count else float("nan")
    result = broadcast_object_list([result])[0]  # every process returns the same figures
    if log:
        log(f"validation: acc1 {result['acc1']:.3f}  acc5 {result['acc5']:.3f}  over {result['count']} images")
    return result
