"""`python -m vgg16.tools.benchmark infer`: inference of our PyTorch model, eager and compiled, against onnxruntime
running the file vgg16.export writes, on the same batches: batch 1 latency and a larger batch's throughput, as
ratios to eager PyTorch measured in the same run."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch


def _model(args) -> torch.nn.Module:
    from ..hub import VGGClassifier, from_pretrained
    from ..model import head_for

    if args.model:
        return from_pretrained(args.model).eval()
    torch.manual_seed(0)
    return VGGClassifier(arch=args.arch, num_classes=1000, head=head_for(args.image_size),
                         image_size=args.image_size).eval()


def _seconds(run, batch: torch.Tensor, steps: int, rounds: int) -> float:
    """The best over `rounds` of the median of `steps` calls, after two untimed ones."""
    best = float("inf")
    for _ in range(rounds):
        for _ in range(2):
            run(batch)
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            run(batch)
            times.append(time.perf_counter() - start)
        best = min(best, statistics.median(times))
    return best


def bench_infer(args) -> list:
    import onnxruntime

    from ..export import export_onnx

    model = _model(args)
    size = model.config.get("val_crop_size") or model.config.get("image_size", args.image_size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, example=torch.randn(2, 3, size, size), opset=None, input_name="image",
                    static_batch=None)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        compiled = torch.compile(model, backend=args.compile_backend)
        sides = {
            "eager": lambda x: model(x),
            "compiled": lambda x: compiled(x),
            "onnxruntime": lambda x: session.run(None, {"image": x.numpy()}),
        }
        results = []
        for batch_size in (1, args.batch_size):
            batch = torch.randn(batch_size, 3, size, size)
            with torch.no_grad():
                seconds = {name: _seconds(run, batch, args.steps, args.rounds) for name, run in sides.items()}
            result = {"what": f"infer batch {batch_size}", "arch": model.config["arch"], "image_size": size,
                      "batch_size": batch_size, "threads": torch.get_num_threads(),
                      "compile_backend": args.compile_backend,
                      **{f"{name}_ms": round(1000 * s, 2) for name, s in seconds.items()},
                      **{f"{name}_images_per_s": round(batch_size / s, 1) for name, s in seconds.items()},
                      "compiled_ratio": round(seconds["eager"] / seconds["compiled"], 3),
                      "onnxruntime_ratio": round(seconds["eager"] / seconds["onnxruntime"], 3)}
            results.append(result)
    return results
