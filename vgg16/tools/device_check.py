"""One command that proves and measures this machine's device path (CUDA, NPU or CPU) and leaves a report.

    python -m vgg16.tools.device_check [--output-dir device_check] [--quick] [--budget-s 450]

Writes device_report.json and device_report.md into the output folder, again after every item, so a run cut
short still leaves what it measured. Items, most important first (an item that would start after the time budget
is reported as skipped, with the reason):
  - ours compiled (bf16 + channels_last + --compile) against the compiled plain loop at batch 256;
  - the real trainer on ~500x375 JPEG photographs made once (vgg16.tools.photos) with --gpu-decode (bf16,
    channels_last, 500 steps or more, the loss finite to the end), then with CPU workers: FPS from results.json;
  - `benchmark data --gpu-decode`: nvJPEG's decode alone and with the batched transforms;
  - the training step of our trainer against a plain PyTorch loop in the same run (`python -m vgg16.tools.benchmark
    train`): bf16, bf16 + channels_last, then fp16, fp32; batch 64/128/256 as memory allows; images/s, ratio,
    FLOP utilisation; the input pipeline: CPU workers against --gpu-decode;
  - correctness on the device: a mid-epoch resume that ends bit-identical (--deterministic), fp16 skipped steps
    counted (checked against the loss scaler's own scale), every validation image counted exactly once.
Each trainer and benchmark run is its own process, as a user would start it: precision and compile settings
cannot leak from one to the next, and a crash or out-of-memory costs one item, not the check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from ..errors import UsageError, one_line
from .device_items import (Check, Plan, item_fp16_skips, item_gpu_decode_benchmark, item_pipeline, item_resume,
                           item_step, item_trainer, photos_folder, step_settings)


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
    gpu_why = None if device == "cuda" else "no nvJPEG: --gpu-decode needs an NVIDIA GPU"
    # What has never run on a GPU first: the compiled step against the compiled plain loop at the largest batch,
    # --gpu-decode's batched transforms in a long bf16 run, and the trainer's FPS on JPEGs both ways.
    name, precision, flags, why = settings[4]
    attempt("step", name, lambda: item_step(check, name, precision, flags, plan.batches[-1:]), why)
    attempt("trainer", "--gpu-decode, channels_last", lambda: item_trainer(check, photos["path"], True),
            gpu_why or no_photos)
    attempt("trainer", "CPU workers, channels_last", lambda: item_trainer(check, photos["path"], False), no_photos)
    attempt("pipeline", "--gpu-decode: decode alone and with the transforms",
            lambda: item_gpu_decode_benchmark(check, photos["path"]),
            ("no JPEG decoder torchvision can call on the NPU" if device == "npu" else None) or no_photos)
    for name, precision, flags, why in settings[:2]:
        attempt("step", name, lambda: item_step(check, name, precision, flags, plan.batches), why)
    attempt("pipeline", "CPU workers against --gpu-decode", lambda: item_pipeline(check, photos["path"]), no_photos)
    attempt("correctness", "mid-epoch resume is bit-identical", lambda: item_resume(check))
    attempt("correctness", "fp16 skipped steps counted", lambda: item_fp16_skips(check),
            None if device != "cpu" else "fp16 needs a GPU or NPU (Accelerate refuses it on CPU)")
    for name, precision, flags, why in settings[2:4]:
        attempt("step", name, lambda: item_step(check, name, precision, flags, plan.batches), why)
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
