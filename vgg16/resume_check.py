"""What a resume changes: the settings a run depends on are recorded in every checkpoint and compared with the
resuming run's, so a changed batch size or epoch count is said, with what follows from it, instead of silently
re-planning the schedule.

Rules (docs/cluster.md "Resuming with other settings"):
- The image order of an epoch depends on the per-process batch, the process count, gradient accumulation, the
  seed and the training data. A checkpoint saved mid-epoch continues only with all of them unchanged: otherwise
  the rest of that epoch would not be the images the first run had left, and the resume stops with one line.
- At an epoch boundary any of them may change; the run continues from the next epoch with the new settings.
- Whenever the schedule's plan changes (epochs, steps per epoch, warm-up, schedule, lr), the schedule is the one
  the new settings would have had from the start, placed after the epochs (and steps) already done: the lr moves from its value at the save to the new plan's value there, and the note says both.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .errors import UsageError
from .optim import position_scheduler


@dataclass(frozen=True)
class RunSettings:
    per_process_batch: int
    processes: int
    grad_accum: int
    seed: int
    train_images: int
    data_fingerprint: str
    """datasets' fingerprint of the training split (a hash of its files or rows), or of a stream's file list."""
    steps_per_epoch: int
    epochs: int
    lr: float
    """The base lr after linear scaling by the global batch."""
    lr_scheduler: str
    lr_update: str
    warmup_epochs: float
    recipe: str
    arch: str
    sampler: str = "shuffle"
    """How an epoch's images are chosen (--sampler, with its draws per epoch)."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> Optional["RunSettings"]:
        """None for a checkpoint written before settings were recorded (or with other fields): nothing to compare."""
        try:
            return cls(**values) if values else None
        except TypeError:
            return None


# Settings that decide which images a step sees; a mid-epoch resume needs them all unchanged.
ORDER = ("per_process_batch", "processes", "grad_accum", "seed", "data_fingerprint", "sampler")
# Settings that decide the lr of each step.
SCHEDULE = ("steps_per_epoch", "epochs", "lr", "lr_scheduler", "lr_update", "warmup_epochs")
FLAGS = {"per_process_batch": "--batch-size", "processes": "processes", "grad_accum": "--grad-accum",
         "seed": "--seed", "data_fingerprint": "training data", "steps_per_epoch": "steps per epoch",
         "epochs": "--epochs", "lr": "lr", "lr_scheduler": "--lr-scheduler", "lr_update": "--lr-update",
         "warmup_epochs": "--warmup-epochs", "recipe": "--recipe", "arch": "--arch", "train_images": "training images",
         "sampler": "--sampler"}


def _value(settings: RunSettings, name: str) -> str:
    if name == "data_fingerprint":
        return f"{settings.train_images} images ({settings.data_fingerprint})"
    value = getattr(settings, name)
    return f"{value:g}" if isinstance(value, float) else str(value)


def changes(saved: RunSettings, now: RunSettings) -> list:
    """The fields that differ, in declaration order (train_images is reported with the data)."""
    return [f.name for f in dataclasses.fields(RunSettings)
            if f.name != "train_images" and getattr(saved, f.name) != getattr(now, f.name)]


def check_resume(checkpoint: str, saved: Optional[RunSettings], now: RunSettings, *, mid_epoch: bool,
                 epoch_checkpoint: Optional[str]) -> list:
    """The changed fields; raise a UsageError when a mid-epoch checkpoint cannot continue the same order."""
    if saved is None:
        return []
    changed = changes(saved, now)
    order = [name for name in changed if name in ORDER]
    if mid_epoch and order:
        was = ", ".join(f"{FLAGS[n]} {_value(saved, n)}" for n in order)
        is_now = ", ".join(f"{FLAGS[n]} {_value(now, n)}" for n in order)
        raise UsageError(f"--resume {checkpoint} was saved in the middle of an epoch with {was}; with {is_now} the "
                         "rest of that epoch would not be the images the first run had left: resume with the "
                         "settings it was saved with, or from an epoch checkpoint, which any settings can continue"
                         + (f" (the newest is {epoch_checkpoint})" if epoch_checkpoint else ""))
    return changed


def describe_changes(saved: RunSettings, now: RunSettings, changed: list, *, lr_at_save: float, lr_now: float,
                     epoch: int) -> str:
    """One note: each difference, then the schedule's consequence."""
    parts = [f"{FLAGS[n]} {_value(saved, n)} -> {_value(now, n)}" for n in changed]
    text = "resuming with changed settings: " + "; ".join(parts)
    if any(n in SCHEDULE for n in changed):
        text += (f". The lr schedule is the one these settings plan from the start, placed at epoch {epoch + 1} of "
                 f"{now.epochs}: lr {lr_at_save:.6g} at the save, {lr_now:.6g} now")
    if any(n in ORDER for n in changed):
        text += ". The epochs from here on shuffle and split the data as the new settings do"
    return text


def replan_schedule(scheduler, planned_base_lrs: list, saved: RunSettings, now: RunSettings, changed: list, *,
                    epoch: int, step_in_epoch: int) -> str:
    """After load_state: when the plan changed, the new plan's schedule (base lrs as now built, since the loaded
    scheduler state brings the saved ones) placed after the epochs and steps done; the note that says so."""
    lr_at_save = scheduler.get_last_lr()[0]
    if any(name in SCHEDULE for name in changed):
        scheduler.base_lrs = list(planned_base_lrs)
        position_scheduler(scheduler, epoch * now.steps_per_epoch + step_in_epoch)
    return describe_changes(saved, now, changed, lr_at_save=lr_at_save, lr_now=scheduler.get_last_lr()[0],
                            epoch=epoch)
