"""The model out of PyTorch: an ONNX file for onnxruntime, TensorRT (`trtexec`) and Ascend's ATC, checked against
our own logits before it is called done.

    python -m vgg16.export --model output --output model.onnx                       # dynamic batch, fp32
    python -m vgg16.export --model output --output vgg16.onnx --opset 11 --input-name actual_input_1   # ATC
    python -m vgg16.export --model IMAGENET1K_V1 -a vgg16 --with-normalize --output vgg16-uint8.onnx

`--model` takes what `--pretrained` takes (our folder, a hub id, a torchvision weights name or file, timm's). The
file's metadata (`onnx.helper.set_model_props`) holds the class names, mean, std, the input size and resize, the
interpolation, what the input is (`input`: float normalised, or uint8 0-255 with `--with-normalize`) and the
source weights; `python -m vgg16.predict --model model.onnx` reads them. The last line is JSON: the file, its
opset, and the parity check: onnxruntime against our PyTorch model on real images (`--data`'s validation images,
the images given, or the embedded digits'), at batch 1 and 7, max abs logit difference and top-1 agreement; a
difference beyond the tolerance exits 1.

Exporters: torch's dynamo exporter (onnxscript) for opset 18 and newer (the default: its own current opset); the
TorchScript exporter for an older opset such as ATC's 11, since the dynamo exporter asked for 11 converts its
graph down with a failure it only logs and writes 18 (design notes, torch 2.14).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .data.images import decode_image
from .data.pipeline import eval_sizes, eval_transform, stack_images
from .engine import Normalizer
from .errors import RunFailure, UsageError, one_line
from .hub import from_pretrained

DYNAMO_MIN_OPSET = 18
# A parity check's logits may differ by this much times the logits' own scale (fp32; --fp16: FP16_TOLERANCE).
FP32_TOLERANCE, FP16_TOLERANCE = 1e-4, 2e-2
PARITY_IMAGES = 14


class WithInput(torch.nn.Module):
    """The model with its input's conversion inside the graph: uint8 NCHW 0-255 in (--with-normalize). Not
    engine.Normalizer: here mean and std are buffers, so `--fp16`'s `.half()` converts them with the weights."""

    def __init__(self, model: torch.nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.to(self.mean.dtype) - self.mean) / self.std
        return self.model(x)


def metadata(config: dict, *, source: str, with_normalize: bool, fp16: bool) -> dict:
    """The file's metadata: what `predict` and a server need to feed the model (string keys and values)."""
    resize, crop = eval_sizes(config)
    return {"vgg16.class_names": json.dumps(list(config["class_names"])), "vgg16.mean": json.dumps(list(config["mean"])),
            "vgg16.std": json.dumps(list(config["std"])), "vgg16.input_size": str(crop), "vgg16.resize_size": str(resize),
            "vgg16.interpolation": config.get("interpolation", "bilinear"), "vgg16.arch": config["arch"],
            "vgg16.input": ("uint8 NCHW 0-255, normalised inside" if with_normalize else
                            ("float16" if fp16 else "float32") + " NCHW, normalised with vgg16.mean/std after /255"),
            "vgg16.source": source}


def export_onnx(model: torch.nn.Module, path: Path, *, example: torch.Tensor, opset: Optional[int], input_name: str,
                static_batch: Optional[int]) -> int:
    """Write the ONNX file; return its opset."""
    import onnx

    names = dict(input_names=[input_name], output_names=["logits"])
    if opset is not None and opset < DYNAMO_MIN_OPSET:
        dynamic = None if static_batch else {input_name: {0: "batch"}, "logits": {0: "batch"}}
        with warnings.catch_warnings():  # deprecated for the dynamo exporter, which cannot write opset 11 (top)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, dynamic_axes=dynamic,
                              **names)
    else:
        shapes = None if static_batch else ({0: torch.export.Dim("batch", min=1, max=4096)},)
        program = torch.onnx.export(model, (example,), dynamo=True, opset_version=opset, dynamic_shapes=shapes,
                                    verbose=False, **names)
        program.save(str(path))
    return onnx.load(str(path), load_external_data=False).opset_import[0].version


def set_metadata(path: Path, props: dict) -> None:
    import onnx

    proto = onnx.load(str(path))
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def parity_images(data: Optional[str], images: Sequence[str]) -> list:
    """Real images for the parity check: the files given, `--data`'s first validation images, or the embedded
    digits'."""
    if images:
        return [decode_image({"path": str(p)}) for p in images]
    from .data.sources import load_source

    import datasets

    split = load_source(data, seed=0).val
    raw = split.cast_column("image", datasets.Image(decode=False))
    return [decode_image(raw[i]["image"]) for i in range(min(PARITY_IMAGES, len(raw)))]


def parity(path: Path, model: torch.nn.Module, config: dict, pictures: list, *, with_normalize: bool,
           fp16: bool) -> dict:
    """onnxruntime against our PyTorch model (fp32, fed normalised floats as training validates) on `pictures`,
    one session, at batch 1 and 7 (and the rest); the file is fed what its input says."""
    import onnxruntime

    resize, crop = eval_sizes(config)
    transform = eval_transform(resize_size=resize, crop_size=crop, interpolation=config.get("interpolation", "bilinear"))
    uint8 = stack_images([transform(p) for p in pictures])
    normalised = Normalizer(config["mean"], config["std"], "cpu")(uint8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed_name = session.get_inputs()[0].name
    with torch.no_grad():
        ours = model(normalised).float().numpy()
    batches, theirs = [], []
    static = session.get_inputs()[0].shape[0]
    sizes = [static] * (len(pictures) // static) if isinstance(static, int) else [1, 7, len(pictures) - 8]
    start = 0
    for size in (s for s in sizes if s > 0):
        part = uint8[start:start + size] if with_normalize else normalised[start:start + size]
        feed = part.numpy() if with_normalize else part.numpy().astype(np.float16 if fp16 else np.float32)
        theirs.append(session.run(None, {feed_name: feed})[0].astype(np.float32))
        batches.append(size)
        start += size
    theirs_all = np.concatenate(theirs)
    ours = ours[:len(theirs_all)]
    scale = max(1.0, float(np.abs(ours).max()))
    diff = float(np.abs(theirs_all - ours).max())
    return {"images": len(theirs_all), "batches": batches, "max_abs_diff": diff,
            "tolerance": (FP16_TOLERANCE if fp16 else FP32_TOLERANCE) * scale,
            "top1_agreement": float((theirs_all.argmax(1) == ours.argmax(1)).mean())}


def run(args: argparse.Namespace) -> dict:
    model = from_pretrained(args.model, args.arch).eval()
    config = model.config
    resize, crop = eval_sizes(config)
    exported = WithInput(model, config["mean"], config["std"]).eval() if args.with_normalize else model
    if args.fp16:  # a copy: the parity check compares with the fp32 model
        exported = copy.deepcopy(exported).half()
    batch = args.static_batch or 2
    example = (torch.randint(0, 256, (batch, 3, crop, crop), dtype=torch.uint8) if args.with_normalize else
               torch.randn(batch, 3, crop, crop, dtype=torch.float16 if args.fp16 else torch.float32))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    opset = export_onnx(exported, out, example=example, opset=args.opset, input_name=args.input_name,
                        static_batch=args.static_batch)
    set_metadata(out, metadata(config, source=str(args.model), with_normalize=args.with_normalize, fp16=args.fp16))
    checked = parity(out, model, config, parity_images(args.data, args.images),
                     with_normalize=args.with_normalize, fp16=args.fp16)
    return {"output": str(out), "opset": opset, "input": args.input_name, "input_size": crop, "resize": resize,
            "batch": args.static_batch or "dynamic", "with_normalize": args.with_normalize, "fp16": args.fp16,
            **checked, "ok": checked["max_abs_diff"] <= checked["tolerance"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vgg16.export", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="what --pretrained takes: a folder, hub id, file, torchvision name")
    p.add_argument("-a", "--arch", default="vgg16", help="for a bare torchvision weights name (default vgg16)")
    p.add_argument("--output", default="model.onnx", help="the ONNX file (default model.onnx)")
    p.add_argument("--format", choices=("onnx",), default="onnx")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the dynamo exporter's own; 11 for ATC)")
    p.add_argument("--static-batch", type=int, metavar="N", help="a fixed batch size (default: a dynamic batch axis)")
    p.add_argument("--input-name", default="image", help="the input's name (actual_input_1 for the ModelZoo's tools)")
    p.add_argument("--fp16", action="store_true", help="half-precision weights and input")
    p.add_argument("--with-normalize", action="store_true",
                   help="uint8 NCHW 0-255 input, converted and normalised inside the graph")
    p.add_argument("--data", help="the parity check's images: this dataset's validation split (default: the digits')")
    p.add_argument("images", nargs="*", help="or these image files for the parity check")
    args = p.parse_args(argv)
    try:
        if args.static_batch is not None and args.static_batch < 1:
            raise UsageError("--static-batch must be at least 1")
        result = run(args)
    except ModuleNotFoundError as e:
        print(f"error: {e.name} is not installed: pip install -r requirements-export.txt", file=sys.stderr)
        return 2
    except (UsageError, RunFailure) as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2 if isinstance(e, UsageError) else 1
    print(json.dumps(result), flush=True)
    if not result["ok"]:
        print(f"error: onnxruntime's logits differ from ours by {result['max_abs_diff']:.3g}, more than "
              f"{result['tolerance']:.3g}: the file does not compute what the model computes", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
