"""The device check's items (vgg16/tools/device_check.py runs them in order and writes the report): each runs our
own commands in processes of their own, as a user would start them, and returns what it measured or found."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Plan:
    """How big each item is: the full check on a GPU or NPU, or --quick (the CPU, the test suite)."""

    arch: str = "vgg16"
    image_size: int = 224
    batches: tuple = (64, 128, 256)
    steps: int = 20
    photo_classes: int = 10
    train_per_class: int = 640
    val_per_class: int = 50
    trainer_batch: int = 256
    trainer_epochs: int = 8
    gpu_decode_steps: int = 500
    """The --gpu-decode trainer runs at least this many steps (its loss must stay finite: nvJPEG's stream bug)."""
    pipeline_batches: int = 20
    resume_arch: str = "vgg11"
    resume_stop: int = 9
    """The resume item stops at this step (mid-epoch: 44 steps an epoch) and resumes to `resume_end`."""
    resume_end: int = 20

    @classmethod
    def quick(cls, arch: str, image_size: int) -> "Plan":
        return cls(arch=arch, image_size=image_size, batches=(4,), steps=3, photo_classes=4, train_per_class=16,
                   val_per_class=5, trainer_batch=8, trainer_epochs=1, gpu_decode_steps=8, pipeline_batches=3, resume_stop=3,
                   resume_end=6)


@dataclass
class Check:
    out: Path
    plan: Plan
    device: str
    """cuda, npu or cpu."""
    deadline: float
    env: dict
    report: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def run(self, args: list, name: str) -> subprocess.CompletedProcess:
        """A command of ours in its own process, cut at the budget; its output is kept in OUT/logs/NAME.log."""
        if self.left() < 5:
            raise TimeoutError("the time budget ran out before it started")
        logs = self.out / "logs"
        logs.mkdir(exist_ok=True)
        try:
            done = subprocess.run([sys.executable, *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                  timeout=self.left())
        except subprocess.TimeoutExpired as e:
            (logs / f"{name}.log").write_text(_text(e.stdout) + _text(e.stderr))
            raise TimeoutError(f"stopped at the time budget after {e.timeout:.0f} s") from None
        (logs / f"{name}.log").write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            raise RuntimeError(f"exit {done.returncode}: {lines[-1] if lines else 'no message'} (logs/{name}.log)")
        return done


def _text(output) -> str:
    return output.decode(errors="replace") if isinstance(output, bytes) else (output or "")


# ---------------------------------------------------------------- items
def photos_folder(check: Check) -> Path:
    """The JPEG photographs, made once (reused by a second run into the same folder)."""
    from .photos import PHOTOS, make_photo_folder

    folder = check.out / "photos"
    marker = folder / ".complete"
    p = check.plan
    want = f"{p.photo_classes} {p.train_per_class} {p.val_per_class}"
    if not (marker.exists() and marker.read_text() == want):
        make_photo_folder(folder, p.train_per_class, p.val_per_class, (500, 375), photos=PHOTOS[:p.photo_classes],
                          processes=os.cpu_count() or 1, scale=(0.6, 1.0))
        marker.write_text(want)
    return folder


def step_settings(device: str) -> list:
    """(name, precision, flags, why it cannot run here or None), most important first."""
    # On a CPU the compiled step runs with the aot_eager backend: the same tracing, DDP-free graph and benchmark
    # plumbing a GPU run uses, without inductor's minutes of C++ compiling.
    compile_setting = (("bf16 + channels_last + compile", "bf16", ["--channels-last", "--compile"], None)
                       if device == "cuda" else
                       ("bf16 + channels_last + compile (aot_eager)", "bf16",
                        ["--channels-last", "--compile", "--compile-backend", "aot_eager"],
                        "torch.compile is not supported for NPU training" if device == "npu" else None))
    return [("bf16", "bf16", [], None),
            ("bf16 + channels_last", "bf16", ["--channels-last"], None),
            ("fp16", "fp16", [], None if device != "cpu" else "fp16 needs a GPU or NPU (Accelerate refuses it on CPU)"),
            ("fp32", "no", [], None),
            compile_setting]


def item_step(check: Check, name: str, precision: str, flags: list, batches: Sequence[int]) -> dict:
    p = check.plan
    done = check.run(["-m", "vgg16.tools.benchmark", "train", "--arch", p.arch, "--image-size", str(p.image_size),
                      "--batch-size", *map(str, batches), "--steps", str(p.steps), "--rounds", "1",
                      "--mixed-precision", precision, *flags], f"step {name}".replace(" ", "_").replace("+", ""))
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {"rows": rows, "status": "measured"}


def item_pipeline(check: Check, photos: Path) -> dict:
    """Images/s from files to uint8 batches on the device: CPU workers decode, or workers read and nvJPEG decodes."""
    import torch
    from torch.utils.data import DataLoader

    from ..data.pipeline import AugmentedDataset, train_transform
    from ..data.decoding import HOST, device_decoding
    from ..launch import default_workers, synchronize
    from ..model import head_for
    from ..data.sources import load_source

    p = check.plan
    device = torch.device(check.device if check.device == "cpu" else f"{check.device}:0")
    train = AugmentedDataset(load_source(str(photos), seed=0).train,
                             train_transform(image_size=p.image_size, small=head_for(p.image_size) == "small"), 0)
    batch = min(p.trainer_batch, len(train) // (p.pipeline_batches + 2))
    rows = []
    ways = [(HOST, default_workers(None, 1), None)]
    ways.append((device_decoding(device), min(4, os.cpu_count() or 1), None) if check.device == "cuda" else
                (None, 0, "no nvJPEG: --gpu-decode needs an NVIDIA GPU" + (" (the NPU has no JPEG decoder torchvision "
                                                                            "can call)" if check.device == "npu" else "")))
    for decoding, workers, why in ways:
        if why:
            rows.append({"way": "gpu decode (nvJPEG)", "status": "skipped", "reason": why})
            continue
        feed = decoding.feed(train)
        loader = DataLoader(feed.dataset, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True,
                            collate_fn=decoding.collate_fn, pin_memory=check.device != "cpu", timeout=120 if workers else 0,
                            prefetch_factor=4 if workers else None, generator=torch.Generator().manual_seed(0))
        it = iter(loader)
        sync = lambda: synchronize(device)  # noqa: E731
        for k in range(p.pipeline_batches + 2):
            if k == 2:  # after worker start-up
                sync()
                start, images = time.perf_counter(), 0
            raw = next(it)
            if decoding.loader_on_device:
                raw = tuple(t.to(device, non_blocking=True) for t in raw)
            pixels, _, _ = feed.prepare(raw)
            if k >= 2:
                images += pixels.shape[0]
        sync()
        rate = images / (time.perf_counter() - start)
        rows.append({"way": decoding.name, "workers": workers, "batch_size": batch, "images_per_s": rate,
                     "status": "measured"})
        del it, loader
    return {"rows": rows, "status": "measured", "images": f"{p.image_size} px RandomResizedCrop + flip from 500x375 JPEGs"}


def item_gpu_decode_benchmark(check: Check, photos: Path) -> dict:
    """`benchmark data --gpu-decode`: which part limits --gpu-decode, nvJPEG or the transforms after it."""
    p = check.plan
    batch = min(p.trainer_batch, p.photo_classes * p.train_per_class // (p.pipeline_batches + 2))
    device = "cuda" if check.device == "cuda" else "cpu"  # on a CPU: the same code on the CPU decoder
    decoder = "nvJPEG" if device == "cuda" else "CPU decoder"
    done = check.run(["-m", "vgg16.tools.benchmark", "data", "--data", str(photos), "--batch-size", str(batch),
                      "--workers", str(min(4, os.cpu_count() or 1)), "--steps", str(p.pipeline_batches), "--rounds", "1",
                      "--gpu-decode", "--device", device], "pipeline_gpu_decode_benchmark")
    r = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][-1]
    common = {"workers": r["workers"], "batch_size": r["batch_size"], "status": "measured"}
    return {"status": "measured", "images": f"{p.image_size} px RandomResizedCrop + flip from 500x375 JPEGs, the "
            f"transforms {'batched' if r['batched_transforms'] else 'per sample'}; torchvision's ImageFolder on CPU "
            f"workers {r['baseline_images_per_s']:.0f}/s",
            "rows": [{"way": f"{decoder} decode alone", "images_per_s": r["decode_only_images_per_s"], **common},
                     {"way": f"{decoder} decode + transforms", "images_per_s": r["decode_and_transforms_images_per_s"],
                      **common}]}


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def item_trainer(check: Check, photos: Path, gpu_decode: bool) -> dict:
    p = check.plan
    name = "trainer_gpu_decode" if gpu_decode else "trainer_cpu_workers"
    folder = check.out / name
    flags = ["--channels-last"] + (["--gpu-decode"] if gpu_decode else [])
    steps_per_epoch = max(1, p.photo_classes * p.train_per_class // p.trainer_batch)
    # --gpu-decode: enough epochs for gpu_decode_steps; CPU workers: half the usual epochs, a steady rate to compare
    epochs = -(-p.gpu_decode_steps // steps_per_epoch) if gpu_decode else max(1, p.trainer_epochs // 2)
    command = ["train_vgg16.py", "--data", str(photos), "-a", p.arch, "--image-size", str(p.image_size),
               "-b", str(p.trainer_batch), "--epochs", str(epochs),
               "--lr", "0.01", "--warmup-epochs", "1",
               "--mixed-precision", "bf16", *flags, "--keep-checkpoints", "1", "--print-freq", "25",
               "--output-dir", str(folder)]
    started = time.monotonic()
    check.run(command, name)
    r = _results(folder)
    expected_val = sum(1 for _ in (photos / "val").rglob("*.jpg"))
    finite = math.isfinite(r["train_loss"]) and all(math.isfinite(h["train_loss"]) for h in r["history"])
    return {"status": ("passed" if finite else "failed") if gpu_decode else "measured", "finite_loss": finite,
            "command": "python " + " ".join(command).replace(str(check.out), "OUT"),
            "fps": r["fps"], "acc1": r["acc1"], "acc5": r["acc5"], "epochs": r["epochs"], "steps": r["steps"],
            "mixed_precision": r["mixed_precision"], "val_images": r["val_images"], "expected_val_images": expected_val,
            "bad_images": r["bad_images"], "wall_s": round(time.monotonic() - started, 1)}


def _digits_run(check: Check, folder: Path, name: str, extra: tuple) -> dict:
    precision = "bf16" if check.device != "cpu" else "no"
    check.run(["train_vgg16.py", "-a", check.plan.resume_arch, "--image-size", "32", "-b", "32", "--epochs", "2",
               "--deterministic", "--mixed-precision", precision, "--workers", "2", "--keep-checkpoints", "1",
               "--output-dir", str(folder), *extra], name)
    return _results(folder)


def item_resume(check: Check) -> dict:
    """Uninterrupted to step `resume_end` against stopped at `resume_stop` (mid-epoch) and resumed: same weights?"""
    import torch
    from safetensors.torch import load_file

    whole, parted = check.out / "resume_whole", check.out / "resume_parted"
    for folder in (whole, parted):  # a rerun in the same --output-dir must not resume the last run's checkpoints
        shutil.rmtree(folder, ignore_errors=True)
    stop, end = str(check.plan.resume_stop), str(check.plan.resume_end)
    _digits_run(check, whole, "resume_whole", ("--stop-step-num", end))
    _digits_run(check, parted, "resume_part1", ("--stop-step-num", stop))
    r = _digits_run(check, parted, "resume_part2", ("--stop-step-num", end, "--resume", "auto"))
    a, b = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    resumed = "resumed from" in (check.out / "logs" / "resume_part2.log").read_text()
    ok = not differing and resumed and set(a) == set(b)
    return {"status": "passed" if ok else "failed", "tensors": len(a), "differing": differing[:5],
            "resumed_mid_epoch": resumed, "val_images": r["val_images"], "expected_val_images": 360,
            "detail": f"{check.plan.resume_arch} on the digits, 32 px, batch 32, --deterministic: stopped at step {stop} of "
                      f"44 and resumed to step {end}, against an uninterrupted run to step {end}"}


def item_fp16_skips(check: Check) -> dict:
    """A loss scale of 2^40 overflows fp16 gradients: each overflow skips the step and halves the scale, so the
    skipped count must equal log2(2^40 / the scaler's final scale)."""
    import math

    import torch

    folder = check.out / "fp16_skips"
    check.run(["train_vgg16.py", "-a", check.plan.resume_arch, "--image-size", "32", "-b", "32", "--epochs", "1",
               "--mixed-precision", "fp16", "--loss-scale", str(2.0**40), "--stop-step-num", "30", "--workers", "2",
               "--output-dir", str(folder)], "fp16_skips")
    r = _results(folder)
    scaler_files = sorted((folder / "checkpoints").glob("*/scaler.pt"))
    halvings = None
    if scaler_files:
        scale = float(torch.load(scaler_files[-1], weights_only=True)["scale"])
        halvings = round(math.log2(2.0**40 / scale))
    ok = r["fp16_skipped_steps"] > 0 and (halvings is None or halvings == r["fp16_skipped_steps"])
    return {"status": "passed" if ok else "failed", "skipped_steps": r["fp16_skipped_steps"], "steps": r["steps"],
            "scaler_halvings": halvings, "final_loss": r["train_loss"]}


# ---------------------------------------------------------------- the run
