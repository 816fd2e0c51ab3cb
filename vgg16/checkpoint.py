"""Training state (Accelerate's save_state/load_state) and the exported model (safetensors + config.json).

A checkpoint folder `checkpoints/epoch_NNNN` holds what `accelerator.save_state` writes (model.safetensors,
optimizer, scaler, each process's RNG; on an NPU also its RNG, which Accelerate leaves out) plus `trainer_state.json` (epoch, step, best accuracy, scheduler). It is
written under a temporary name and renamed when complete, so a kill mid-save leaves the previous one usable.
Nothing here is unpickled beyond what Accelerate loads with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import torch
from accelerate import Accelerator
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .elastic import restart_count
from .errors import RunFailure, UsageError, write_failure
from .model import check_state_dict, with_timm_fields
from .weights import MODEL_CONFIG, WEIGHTS, read_weights  # noqa: F401 - read_weights: ckpt.read_weights

TRAINER_STATE = "trainer_state.json"
NPU_RNG = "npu_rng_state_{}.safetensors"


def _npu():
    """torch.npu when torch_npu is loaded and an NPU is visible, else None."""
    npu = getattr(torch, "npu", None)
    return npu if npu is not None and npu.is_available() else None


def save_npu_rng(folder: Path, process_index: int) -> None:
    """Accelerate's save_state (1.15) keeps the RNG of CPU, CUDA, XPU, MLU, MUSA, HPU, Neuron... but not of the
    NPU: without this, dropout after a resume on Ascend would not draw what an uninterrupted run draws."""
    npu = _npu()
    if npu is not None:
        states = npu.get_rng_state_all()
        save_file({f"device_{i}": state.contiguous() for i, state in enumerate(states)},
                  str(Path(folder) / NPU_RNG.format(process_index)))


def load_npu_rng(folder: Path, process_index: int) -> None:
    npu, path = _npu(), Path(folder) / NPU_RNG.format(process_index)
    if npu is not None and path.exists():
        states = load_file(str(path))
        npu.set_rng_state_all([states[f"device_{i}"] for i in range(len(states))])


def write_json(path: Path, obj: dict) -> None:
    """Write atomically: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def list_checkpoints(checkpoints_dir: Path) -> list:
    """Complete checkpoints (those with a readable trainer_state.json), oldest first by optimizer step."""
    found = []
    for path in Path(checkpoints_dir).glob("*"):
        if path.name.startswith(".") or not path.is_dir():
            continue  # .tmp_*: a save that never finished
        try:
            found.append((json.loads((path / TRAINER_STATE).read_text())["global_step"], path.name, path))
        except (OSError, ValueError, KeyError):
            continue
    return [p for _, _, p in sorted(found)]


def newest_epoch_checkpoint(output_dir: Path) -> Optional[Path]:
    found = [p for p in list_checkpoints(Path(output_dir) / "checkpoints") if p.name.startswith("epoch_")]
    return found[-1] if found else None


def latest_checkpoint(output_dir: Path) -> Optional[Path]:
    found = list_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1] if found else None


# How torch.save's file writer words an I/O failure (it raises RuntimeError, not OSError).
TORCH_SAVE_IO_ERRORS = ("Parent directory", "cannot be opened", "file write failed", "PytorchStreamWriter failed")


@dataclass
class RunState:
    """Where a run stands, as trainer_state.json records it: `epoch` epochs done and `step_in_epoch` optimizer steps
    of the next one; `global_step` optimizer steps in all; the best validation top-1 so far; the epoch whose
    weights are exported (`best`: its number, the --best-metric and its value, its figures)."""
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_acc1: float = 0.0
    best: Optional[dict] = None

    @classmethod
    def from_dict(cls, values: dict) -> "RunState":
        return cls(values["epoch"], values.get("step_in_epoch", 0), values["global_step"], values["best_acc1"],
                   best=values.get("best"))

    @property
    def checkpoint_name(self) -> str:
        """epoch_NNNN at an epoch's end, step_NNNNNNNNN within one."""
        return f"epoch_{self.epoch:04d}" if self.step_in_epoch == 0 else f"step_{self.global_step:09d}"


def save_training_state(accelerator: Accelerator, checkpoints_dir: Path, state: RunState, extra: dict, *,
                        keep: int = 2) -> Path:
    """Save the full training state, with `state` and `extra` in trainer_state.json, as checkpoints_dir/NAME
    (`RunState.checkpoint_name`).

    Written to .tmp_<name> and renamed when complete, so a kill or a full disk leaves the previous checkpoints as
    they were; then all but the newest `keep` are deleted (never the one just written).
    """
    name = state.checkpoint_name
    final, tmp = checkpoints_dir / name, checkpoints_dir / f".tmp_{name}"
    try:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))  # every process writes its RNG state; the main one the rest
        save_npu_rng(tmp, accelerator.process_index)
        if accelerator.is_main_process:
            write_json(tmp / TRAINER_STATE, {**asdict(state), **extra})
            shutil.rmtree(final, ignore_errors=True)
            tmp.replace(final)
    except (OSError, SafetensorError, RuntimeError) as e:
        # A full disk, a file-size limit or a vanished mount: safetensors reports these as its own error type,
        # torch.save (the RNG states) as a RuntimeError. This process ends; the launcher then stops the others
        # (docs/faults.md "When a worker dies").
        if isinstance(e, RuntimeError) and not any(m in str(e) for m in TORCH_SAVE_IO_ERRORS):
            raise
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        elif not tmp.exists():
            raise RunFailure(f"could not write checkpoint {final}: the main process removed the unfinished folder "
                             "after its own save failed (its error line says why)") from None
        previous = latest_checkpoint(checkpoints_dir.parent)
        raise RunFailure(f"could not write checkpoint {final} ({write_failure(e)}); "
                         + (f"the previous checkpoint {previous} is intact; " if previous else "")
                         + "free some space or choose another --output-dir, then --resume auto") from None
    if accelerator.is_main_process:
        for old in list_checkpoints(checkpoints_dir)[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def resolve_resume(resume: Optional[str], output_dir: Path, evaluate: bool, log) -> Optional[str]:
    """The checkpoint to resume from: --resume auto -> the newest complete one in output_dir, or None (a fresh
    start, said) when there is none; a path as given.

    A group the launcher restarted (`accelerate launch --max_restarts N`) resumes as with --resume auto whatever
    --resume says: starting over, or from the checkpoint the first attempt began at, would throw away the steps
    done since."""
    restart = restart_count()
    if restart and not evaluate:
        latest = latest_checkpoint(output_dir)
        log(f"restart {restart} of this job's processes (accelerate launch --max_restarts): "
            + (f"resuming from the newest checkpoint, {latest}" if latest else
               "no checkpoint was written before the failure, starting " +
               (f"from --resume {resume}" if resume not in (None, "auto") else "fresh")))
        if latest is not None or resume == "auto":
            return str(latest) if latest else None
    if resume != "auto":
        return resume
    latest = latest_checkpoint(output_dir)
    if latest is None:
        if evaluate:
            raise UsageError(f"--resume auto: no checkpoint in {output_dir / 'checkpoints'} to evaluate")
        log(f"--resume auto: no checkpoint in {output_dir / 'checkpoints'}, starting fresh")
    return str(latest) if latest else None


def read_trainer_state(checkpoint: Path) -> dict:
    path = Path(checkpoint)
    if not path.is_dir():
        raise UsageError(f"--resume {checkpoint}: no such checkpoint folder (give OUTPUT/checkpoints/epoch_NNNN, "
                         "or --resume auto for the newest in --output-dir)")
    try:
        return json.loads((path / TRAINER_STATE).read_text())
    except FileNotFoundError:
        raise UsageError(f"--resume {checkpoint}: no {TRAINER_STATE} there; is it a checkpoints/epoch_NNNN folder "
                         "written by train_vgg16.py?") from None
    except json.JSONDecodeError as e:
        raise UsageError(f"--resume {checkpoint}: {TRAINER_STATE} is damaged ({e})") from None


def load_training_state(accelerator: Accelerator, checkpoint: Path, model: nn.Module, scheduler) -> RunState:
    """Restore model, optimizer, scaler, RNG and scheduler; return where the run stood."""
    state = read_trainer_state(checkpoint)
    check_state_dict(accelerator.unwrap_model(model), read_weights(Path(checkpoint) / WEIGHTS), f"--resume {checkpoint}")
    try:
        accelerator.load_state(str(checkpoint))
        load_npu_rng(Path(checkpoint), accelerator.process_index)
    except (RuntimeError, OSError, ValueError, EOFError) as e:
        raise UsageError(f"--resume {checkpoint}: could not load the training state ({str(e).splitlines()[0]})") from None
    scheduler.load_state_dict(state["scheduler"])
    return RunState.from_dict(state)


def export_model(accelerator: Accelerator, model: nn.Module, output_dir: Path, model_config: dict) -> None:
    """model.safetensors with torchvision's keys and config.json: a folder torchvision and the hub accept.

    Written beside and then renamed over the previous export, so a kill never leaves half a weights file."""
    tmp = output_dir / ".tmp_export"
    try:
        accelerator.save_model(model, str(tmp), safe_serialization=True)
        if accelerator.is_main_process:
            write_json(tmp / MODEL_CONFIG, with_timm_fields(model_config))
            for f in tmp.iterdir():
                f.replace(output_dir / f.name)
            tmp.rmdir()
    except (OSError, SafetensorError) as e:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise RunFailure(f"could not write the model to {output_dir} ({write_failure(e)}); the previous export and "
                         "checkpoints are intact: free some space, then --resume auto") from None
    accelerator.wait_for_everyone()
