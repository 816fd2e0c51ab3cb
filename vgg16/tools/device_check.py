"""One command that proves and measures this machine's device path (CUDA, NPU or CPU) and leaves a report.

    python -m vgg16.tools.device_check [--output-dir device_check] [--quick] [--budget-s 450]

Writes device_report.json and device_report.md into the output folder, again after every item, so a run cut
short still leaves what it measured. Items, most important first (an item that would start after the time budget
is reported as skipped, with the reason):
  - the training step of our trainer against a plain PyTorch loop in the same run (`python -m vgg16.tools.benchmark
    train`): bf16, bf16 + channels_last, fp16, fp32, bf16 + channels_last + torch.compile; batch 64/128/256 as
    memory allows; images/s, ratio, FLOP utilisation;
  - the input pipeline on ~500x375 JPEG photographs made once (vgg16.tools.photos): CPU workers against --gpu-decode;
  - the real trainer for a few hundred steps on those photographs (--gpu-decode, bf16, channels_last), FPS from
    results.json, and the same with CPU workers;
  - correctness on the device: a mid-epoch resume that ends bit-identical (--deterministic), fp16 skipped steps
    counted (checked against the loss scaler's own scale), every validation image counted exactly once.
Each trainer and benchmark run is its own process, as a user would start it: precision and compile settings
cannot leak from one to the next, and a crash or out-of-memory costs one item, not the check.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import UsageError, one_line

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
    pipeline_batches: int = 20
    resume_arch: str = "vgg11"

    @classmethod
    def quick(cls, arch: str, image_size: int) -> "Plan":
        return cls(arch=arch, image_size=image_size, batches=(4,), steps=3, photo_classes=4, train_per_class=16,
                   val_per_class=5, trainer_batch=8, trainer_epochs=1, pipeline_batches=3)


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


# ---------------------------------------------------------------- environment
def detect_device() -> tuple[str, dict]:
    import torch

    info = {"python": sys.version.split()[0], "torch": torch.__version__}
    for module in ("accelerate", "torchvision", "datasets"):
        try:
            info[module] = __import__(module).__version__
        except ImportError:
            info[module] = "missing"
    if torch.cuda.is_available():  # the properties the report names (memory, SMs, CUDA/cuDNN) are CUDA's own
        props = torch.cuda.get_device_properties(0)
        info.update(device_name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
        return "cuda", info
    if hasattr(torch, "npu") and torch.npu.is_available():
        info.update(device_name=torch.npu.get_device_name(0))
        return "npu", info
    import platform

    info.update(device_name=platform.processor() or platform.machine(), cpus=os.cpu_count())
    return "cpu", info


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
    off_cuda = None if device == "cuda" else (
        "torch.compile is not supported for NPU training" if device == "npu" else
        "GPU only: compiling VGG16 on a CPU costs more than it saves, and the trainer refuses --compile there")
    return [("bf16", "bf16", [], None),
            ("bf16 + channels_last", "bf16", ["--channels-last"], None),
            ("fp16", "fp16", [], None if device != "cpu" else "fp16 needs a GPU or NPU (Accelerate refuses it on CPU)"),
            ("fp32", "no", [], None),
            ("bf16 + channels_last + compile", "bf16", ["--channels-last", "--compile"], off_cuda)]


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


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def item_trainer(check: Check, photos: Path, gpu_decode: bool) -> dict:
    p = check.plan
    name = "trainer_gpu_decode" if gpu_decode else "trainer_cpu_workers"
    folder = check.out / name
    flags = ["--channels-last"] + (["--gpu-decode"] if gpu_decode else [])
    command = ["train_vgg16.py", "--data", str(photos), "-a", p.arch, "--image-size", str(p.image_size),
               # CPU workers: half the epochs, enough for a steady rate to compare with
               "-b", str(p.trainer_batch), "--epochs", str(p.trainer_epochs if gpu_decode else max(1, p.trainer_epochs // 2)),
               "--lr", "0.01", "--warmup-epochs", "1",
               "--mixed-precision", "bf16", *flags, "--keep-checkpoints", "1", "--print-freq", "25",
               "--output-dir", str(folder)]
    started = time.monotonic()
    check.run(command, name)
    r = _results(folder)
    expected_val = sum(1 for _ in (photos / "val").rglob("*.jpg"))
    return {"status": "measured", "command": "python " + " ".join(command).replace(str(check.out), "OUT"),
            "fps": r["fps"], "acc1": r["acc1"], "acc5": r["acc5"], "epochs": r["epochs"], "steps": r["steps"],
            "mixed_precision": r["mixed_precision"], "val_images": r["val_images"], "expected_val_images": expected_val,
            "bad_images": r["bad_images"], "wall_s": round(time.monotonic() - started, 1)}


def _digits_run(check: Check, folder: Path, name: str, *extra: str) -> dict:
    precision = "bf16" if check.device != "cpu" else "no"
    check.run(["train_vgg16.py", "-a", check.plan.resume_arch, "--image-size", "32", "-b", "32", "--epochs", "2",
               "--deterministic", "--mixed-precision", precision, "--workers", "2", "--keep-checkpoints", "1",
               "--output-dir", str(folder), *extra], name)
    return _results(folder)


def item_resume(check: Check) -> dict:
    """Uninterrupted to step 20 against stopped at step 9 (mid-epoch) and resumed to step 20: same weights?"""
    import torch
    from safetensors.torch import load_file

    whole, parted = check.out / "resume_whole", check.out / "resume_parted"
    for folder in (whole, parted):  # a rerun in the same --output-dir must not resume the last run's checkpoints
        shutil.rmtree(folder, ignore_errors=True)
    _digits_run(check, whole, "resume_whole", "--stop-step-num", "20")
    _digits_run(check, parted, "resume_part1", "--stop-step-num", "9")
    r = _digits_run(check, parted, "resume_part2", "--stop-step-num", "20", "--resume", "auto")
    a, b = load_file(whole / "model.safetensors"), load_file(parted / "model.safetensors")
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    resumed = "resumed from" in (check.out / "logs" / "resume_part2.log").read_text()
    ok = not differing and resumed and set(a) == set(b)
    return {"status": "passed" if ok else "failed", "tensors": len(a), "differing": differing[:5],
            "resumed_mid_epoch": resumed, "val_images": r["val_images"], "expected_val_images": 360,
            "detail": f"{check.plan.resume_arch} on the digits, 32 px, batch 32, --deterministic: stopped at step 9 of "
                      f"44 and resumed to step 20, against an uninterrupted run to step 20"}


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
def run_check(out: Path, quick: bool, budget_s: float, arch: Optional[str] = None,
              image_size: Optional[int] = None) -> dict:
    from .device_report import write_reports

    device, info = detect_device()
    plan = Plan.quick(arch or "vgg16", image_size or 224) if quick else Plan(arch=arch or "vgg16",
                                                                             image_size=image_size or 224)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
           "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    check = Check(out, plan, device, time.monotonic() + budget_s, env)
    check.report = {"device": device, "environment": info, "quick": quick, "budget_s": budget_s, "plan": vars(plan),
                    "items": []}
    started = time.monotonic()

    def attempt(kind: str, name: str, fn: Callable[[], dict], why_not: Optional[str] = None) -> dict:
        entry = {"kind": kind, "name": name}
        t0 = time.monotonic()
        if why_not:
            entry.update(status="skipped", reason=why_not)
        elif check.left() < 10:
            entry.update(status="skipped", reason=f"time budget ({budget_s:.0f} s, --budget-s) spent")
        else:
            try:
                entry.update(fn())
            except Exception as e:  # noqa: BLE001 - every failure is a finding for the report, never a traceback
                entry.update(status="failed", reason=one_line(e)[:400])
        entry["seconds"] = round(time.monotonic() - t0, 1)
        check.report["items"].append(entry)
        check.report["elapsed_s"] = round(time.monotonic() - started, 1)
        write_reports(out, check.report)
        print(f"[{check.report['elapsed_s']:6.1f} s] {kind}: {name}: {entry['status']}"
              + (f" ({entry['reason']})" if entry.get("reason") else ""), flush=True)
        return entry

    settings = step_settings(device)
    photos = {}
    attempt("setup", "JPEG photographs", lambda: {"status": "measured", "folder": str(photos.setdefault(
        "path", photos_folder(check)))})
    have_photos = "path" in photos
    no_photos = None if have_photos else "the photographs could not be made (see the setup item)"
    fitting = list(plan.batches)
    for name, precision, flags, why in settings[:2]:
        e = attempt("step", name, lambda: item_step(check, name, precision, flags, plan.batches), why)
        fitting = [r["batch_size"] for r in e.get("rows", []) if not r.get("oom")] or fitting
    gpu_why = None if device == "cuda" else "no nvJPEG: --gpu-decode needs an NVIDIA GPU"
    attempt("pipeline", "CPU workers against --gpu-decode", lambda: item_pipeline(check, photos["path"]), no_photos)
    attempt("trainer", "--gpu-decode, channels_last", lambda: item_trainer(check, photos["path"], True),
            gpu_why or no_photos)
    attempt("correctness", "mid-epoch resume is bit-identical", lambda: item_resume(check))
    attempt("correctness", "fp16 skipped steps counted", lambda: item_fp16_skips(check),
            None if device != "cpu" else "fp16 needs a GPU or NPU (Accelerate refuses it on CPU)")
    for name, precision, flags, why in settings[2:4]:
        attempt("step", name, lambda: item_step(check, name, precision, flags, plan.batches), why)
    attempt("trainer", "CPU workers, channels_last", lambda: item_trainer(check, photos["path"], False), no_photos)
    name, precision, flags, why = settings[4]  # compiling is the slowest item: once, at the largest batch that fits
    attempt("step", name, lambda: item_step(check, name, precision, flags, fitting[-1:]), why)
    check.report["complete"] = True
    write_reports(out, check.report)
    return check.report


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.tools.device_check", description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="device_check", help="where the report, logs and photographs go")
    parser.add_argument("--quick", action="store_true", help="the reduced check: batch 4, few images (the CPU, tests)")
    parser.add_argument("--budget-s", type=float, default=450, help="start no item after this many seconds "
                        "(default 450: the full check fits 8 minutes on one H100)")
    parser.add_argument("--arch", help="model of the step and trainer items (default vgg16)")
    parser.add_argument("--image-size", type=int, help="image size of the step and trainer items (default 224)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--output-dir {out} cannot be created ({e.strerror})") from None
        report = run_check(out.resolve(), args.quick, args.budget_s, args.arch, args.image_size)
    except (UsageError, ImportError, OSError) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    failed = [i for i in report["items"] if i["status"] == "failed"]
    print(f"{out / 'device_report.md'}: {len(report['items'])} items, {len(failed)} failed, "
          f"{sum(i['status'] == 'skipped' for i in report['items'])} skipped, {report['elapsed_s']:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
