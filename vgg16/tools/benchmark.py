"""Throughput against the plain PyTorch way, measured in the same run on the same machine.

    python -m vgg16.tools.benchmark data --data DIR [--batch-size 64 --workers N --steps 50 --eval --gpu-decode]
    python -m vgg16.tools.benchmark stream --data PARQUET_DIR [--batch-size 64 --workers N --steps 50]
    python -m vgg16.tools.benchmark train [--arch vgg16 --image-size 224 --batch-size 64 --steps 30 --mixed-precision bf16]
    python -m vgg16.tools.benchmark infer [--model FOLDER | --arch vgg16 --image-size 224] [--batch-size 32]

`data` times our input pipeline (decode + augment to uint8, normalised later on the device) against torchvision's
ImageFolder + PIL + ToTensor + Normalize on the same folder, workers and batch. `stream` times --streaming against the same
parquet files loaded whole (map-style), after measuring that whole load's time and Arrow copy. `train` times our
training step
(Accelerate, the engine's train_one_epoch, on synthetic data) against a plain PyTorch loop with the same model,
batch and optimizer. `infer` times our model's inference, eager and compiled, against onnxruntime on the ONNX file
vgg16.export writes (tools/bench_infer.py). Both run the two sides for `--rounds` rounds, the first side alternating, and keep each
side's best, since a shared machine is noisy. The last stdout lines are JSON objects, one per batch size, with
images_per_s, baseline_images_per_s and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..config import COMPILE_MODES
from ..errors import RunFailure, UsageError, one_line
from .bench_infer import bench_infer
from .bench_train import bench_train, side_order

def _time_loader(loader, steps: int, warmup: int = 2) -> float:
    """Images/s over `steps` batches after `warmup` batches (loader start-up and worker spawn excluded)."""
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    images, start = 0, time.perf_counter()
    for _ in range(steps):
        batch = next(it)
        images += len(batch[0])
    return images / (time.perf_counter() - start)


def bench_data(args) -> dict:
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    from ..data.pipeline import (IMAGENET_MEAN, IMAGENET_STD, AugmentedDataset, collate_samples, eval_transform,
                                 train_transform)
    from ..data.batch_buffers import reuse_on
    from ..data.region_decode import region_decoder_status
    from ..data.sources import load_source

    source = load_source(args.data, seed=0)
    split = source.val if args.eval else source.train
    ours_set = AugmentedDataset(split, eval_transform(resize_size=256, crop_size=224, interpolation="bilinear") if args.eval else train_transform(image_size=224, small=False), 0)
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    ref_tf = (T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]) if args.eval else
              T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    folder = os.path.join(args.data, ("val" if os.path.isdir(os.path.join(args.data, "val")) else "validation")
                          if args.eval else "train")
    ref_set = tv_datasets.ImageFolder(folder, ref_tf)
    need = (args.steps + 2) * args.batch_size
    if len(ours_set) < need:
        raise SystemExit(f"error: {folder} has {len(ours_set)} images; --steps {args.steps} x --batch-size "
                         f"{args.batch_size} needs {need}")

    def loader(ds):  # ours with the trainer's collate (channels-last uint8 batches), the baseline with its own
        return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                                           collate_fn=collate_samples if ds is ours_set else None,
                                           drop_last=True, generator=torch.Generator().manual_seed(0),
                                           persistent_workers=False, prefetch_factor=4 if args.workers else None)

    ours, ref, gpu = 0.0, 0.0, {}
    for r in range(args.rounds):
        for side in side_order(r):
            if side == "baseline":
                ref = max(ref, _time_loader(loader(ref_set), args.steps))
            elif args.gpu_decode:
                rates = _time_gpu_decode(ours_set, args)
                gpu = {k: max(v, gpu.get(k, 0.0)) for k, v in rates.items()}
                ours = gpu["decode_and_transforms_images_per_s"]
            else:
                ours = max(ours, _time_loader(loader(ours_set), args.steps))
    return {"what": f"data pipeline ({'eval' if args.eval else 'train'} transforms, 224 px"
                    + (f", --gpu-decode on {args.device}" if args.gpu_decode else "") + ")", "images_per_s": ours, **gpu,
            "baseline_images_per_s": ref, "ratio": ours / ref, "workers": args.workers,
            "batch_size": args.batch_size, "images": len(ours_set), "baseline": "torchvision ImageFolder + PIL + "
            "ToTensor + Normalize", "region_decode": region_decoder_status(),
            **({"batch_buffers": "reused" if reuse_on() else "new per batch (VGG16_REUSE_BATCH_BUFFERS=0)"}
               if args.workers and not args.gpu_decode else {})}


def _time_gpu_decode(dataset, args) -> dict:
    """--gpu-decode as the trainer feeds it (workers read file bytes, the batch decoder decodes and transforms
    on the device): images/s of the decode alone and of decode + transforms, over the same batches."""
    from ..data.gpu_decode import BatchDecoder, EncodedImages, collate_encoded
    from ..launch import synchronize

    device = torch.device(args.device)
    decoder = BatchDecoder(dataset, device)
    loader = torch.utils.data.DataLoader(EncodedImages(dataset), batch_size=args.batch_size, shuffle=True,
                                         num_workers=args.workers, drop_last=True, collate_fn=collate_encoded,
                                         generator=torch.Generator().manual_seed(0), pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if args.workers else None)
    batches = []
    for k, batch in enumerate(loader):  # read first: what is timed is the device's work, not the file reads
        if k == args.steps + 1:
            break
        batches.append(batch)
    rates = {}
    for name, work in (("decode_only_images_per_s", lambda b: decoder._decode(b[0])),
                       ("decode_and_transforms_images_per_s", decoder)):
        work(batches[0])  # warm-up: nvJPEG's handles, cuDNN-free kernels' first launch
        synchronize(device)
        start = time.perf_counter()
        for batch in batches[1:]:
            work(batch)
        synchronize(device)
        rates[name] = args.batch_size * (len(batches) - 1) / (time.perf_counter() - start)
    rates["batched_transforms"] = decoder.batched is not None
    return rates


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def bench_stream(args) -> dict:
    """--streaming against loading the same parquet files whole (`Dataset.from_parquet`, the map-style path):
    what the whole load costs first (time, and disk for its Arrow copy, in a fresh cache), then images/s of both
    loaders with the same transform, batch and workers."""
    import tempfile

    import datasets

    from ..data.pipeline import AugmentedDataset, build_loaders, train_transform
    from ..data.shards import load_parquet_source
    from ..data.sources import load_parquet_folder
    from ..data.streaming import ParquetStream, StreamPlan, stream_loader, train_batches

    transform = train_transform(image_size=224, small=False)
    started = time.perf_counter()
    source = load_parquet_source(args.data)
    footers_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory(dir=args.cache_dir) as cache:
        datasets.config.HF_DATASETS_CACHE = cache  # a cold conversion, whatever was loaded before
        started = time.perf_counter()
        whole = load_parquet_folder(Path(args.data), seed=0)
        load_s = time.perf_counter() - started
        arrow_bytes = _folder_bytes(cache)
        mapped = AugmentedDataset(whole.train, transform, 0)
        map_loader, _ = build_loaders(mapped, mapped, batch_size=args.batch_size, workers=args.workers, seed=0,
                                      pin_memory=False)
        batches = train_batches(source.train.num_rows, num_processes=1, batch_size=args.batch_size)
        plan = StreamPlan(num_processes=1, rank=0, batch_size=args.batch_size, num_batches=batches,
                          streams=max(1, args.workers), shuffle_buffer=args.shuffle_buffer, seed=0, train=True)
        stream = ParquetStream(source.train, transform, plan, image_shape=(3, 224, 224))
        started = time.perf_counter()
        first = next(iter(stream_loader(stream, workers=args.workers, seed=0, pin_memory=False)))
        first_batch_s = time.perf_counter() - started + footers_s
        assert len(first[0]) == args.batch_size
        ours, ref = 0.0, 0.0
        for r in range(args.rounds):
            for side in side_order(r):
                if side == "baseline":
                    ref = max(ref, _time_loader(map_loader, args.steps))
                else:
                    stream.set_epoch(r)
                    ours = max(ours, _time_loader(stream_loader(stream, workers=args.workers, seed=0, pin_memory=False),
                                                  args.steps))
        del whole, mapped, map_loader
    parquet_bytes = sum(os.path.getsize(f) for f in (*source.train.files, *source.val.files))
    return {"what": f"streaming {args.data} ({source.train.num_rows} train rows, {parquet_bytes / 1e9:.2f} GB of parquet)",
            "images_per_s": ours, "baseline_images_per_s": ref, "ratio": ours / ref, "workers": args.workers,
            "batch_size": args.batch_size, "baseline": "Dataset.from_parquet (map-style)",
            "whole_load_s": load_s, "arrow_copy_bytes": arrow_bytes, "stream_first_batch_s": first_batch_s,
            "parquet_bytes": parquet_bytes}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.tools.benchmark", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    d = sub.add_parser("data", help="input pipeline against torchvision's ImageFolder")
    d.add_argument("--data", required=True, help="ImageNet-style folder")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    d.add_argument("--steps", type=int, default=50)
    d.add_argument("--eval", action="store_true", help="evaluation transforms (Resize 256 + CenterCrop 224)")
    d.add_argument("--gpu-decode", action="store_true", help="ours as --gpu-decode: workers read the files, the "
                   "device decodes and transforms each batch; reports the decode alone and decode + transforms")
    d.add_argument("--device", default="cuda", help="with --gpu-decode (cpu: the same code on the CPU decoder)")
    st = sub.add_parser("stream", help="--streaming against loading the parquet files whole (Dataset.from_parquet)")
    st.add_argument("--data", required=True, help="a local parquet folder in the hub layout")
    st.add_argument("--batch-size", type=int, default=64)
    st.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    st.add_argument("--steps", type=int, default=50)
    st.add_argument("--shuffle-buffer", type=int, default=8192)
    st.add_argument("--cache-dir", help="where the whole load's Arrow copy goes (default: the system's temp folder)")
    t = sub.add_parser("train", help="training step against a plain PyTorch loop")
    t.add_argument("--arch", default="vgg16")
    t.add_argument("--image-size", type=int, default=224)
    t.add_argument("--batch-size", type=int, nargs="+", default=[64], help="one or more; stops at the first that "
                   "does not fit in memory")
    t.add_argument("--steps", type=int, default=30)
    t.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    t.add_argument("--channels-last", action="store_true", help="channels_last model and batches (both sides)")
    t.add_argument("--compile", action="store_true", help="torch.compile both sides (ours as the trainer compiles)")
    t.add_argument("--compile-mode", choices=COMPILE_MODES, default="default")
    t.add_argument("--compile-backend", default="inductor")
    t.add_argument("--peak-tflops", type=float, help="device peak for FLOP utilisation, if not known")
    t.add_argument("--stop-check", action="store_true", help="also time ours with the per-step preemption check, "
                   "and the check alone (launch with several processes to include its all-reduce)")
    i = sub.add_parser("infer", help="inference: eager and compiled PyTorch against onnxruntime")
    i.add_argument("--model", help="one of our folders (default: random weights of --arch at --image-size)")
    i.add_argument("--arch", default="vgg16")
    i.add_argument("--image-size", type=int, default=224)
    i.add_argument("--batch-size", type=int, default=32, help="the throughput batch (latency: batch 1)")
    i.add_argument("--steps", type=int, default=10, help="timed calls per round (their median counts)")
    i.add_argument("--compile-backend", default="inductor")
    for p in (d, st, t, i):
        p.add_argument("--rounds", type=int, default=2, help="alternate both sides this many times; keep the best")
    args = parser.parse_args(argv)
    try:
        results = {"data": lambda: [bench_data(args)], "stream": lambda: [bench_stream(args)],
                   "train": lambda: bench_train(args), "infer": lambda: bench_infer(args)}[args.what]()
    except (UsageError, RunFailure) as e:  # a wrong --data and the like: one line, as train_vgg16.py says it
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under a launcher: the main process reports
    for result in results:
        if result["what"].startswith("infer"):
            print(f"{result['what']}: eager {result['eager_ms']:.2f} ms, compiled {result['compiled_ms']:.2f} ms "
                  f"(x{result['compiled_ratio']:.2f}), onnxruntime {result['onnxruntime_ms']:.2f} ms "
                  f"(x{result['onnxruntime_ratio']:.2f}); {result['eager_images_per_s']:.1f} / "
                  f"{result['compiled_images_per_s']:.1f} / {result['onnxruntime_images_per_s']:.1f} images/s")
            continue
        if result.get("oom"):
            print(f"{result['what']}: out of device memory, larger batches skipped")
        else:
            print(f"{result['what']}: ours {result['images_per_s']:.1f} images/s, baseline "
                  f"{result['baseline_images_per_s']:.1f} images/s ({result['baseline']}), ratio {result['ratio']:.3f}"
                  + (f", FLOP utilisation {100 * result['flop_utilisation']:.1f}%" if "flop_utilisation" in result else "")
                  + (f"; with the stop check {result['with_stop_check_images_per_s']:.1f} images/s (ratio "
                     f"{result['stop_check_ratio']:.3f}), the check alone {result['stop_check_us']:.0f} us = "
                     f"{100 * result['stop_check_share_of_step']:.3f}% of a step" if "stop_check_us" in result else "")
                  + (f"; region decoder {result['region_decode']}" if "region_decode" in result else "")
                  + (f"; worker batch buffers {result['batch_buffers']}" if "batch_buffers" in result else "")
                  + (f"; decode alone {result['decode_only_images_per_s']:.1f} images/s, decode + transforms "
                     f"{result['decode_and_transforms_images_per_s']:.1f}" if "decode_only_images_per_s" in result else "")
                  + (f"; the whole load took {result['whole_load_s']:.1f} s and {result['arrow_copy_bytes'] / 1e9:.2f} GB "
                     f"of disk for its Arrow copy, the first streamed batch {result['stream_first_batch_s']:.2f} s"
                     if "whole_load_s" in result else ""))
    for result in results:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
