"""The top classes of images with an exported model, in batches on the device.

    python -m vgg16.predict --model output cat.jpg dog.png
    python -m vgg16.predict --model user/vgg16-digits photos/ --top-k 3 --json    # a folder, a hub model id
    python -m vgg16.predict --model model.onnx cat.jpg     # an exported file, through onnxruntime (vgg16.export)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

from .data.images import BAD_IMAGE_ERRORS, decode_image
from .data.pipeline import eval_sizes, eval_transform, stack_images
from .engine import Normalizer
from .errors import UsageError, one_line
from .hub import from_pretrained
from .data.folders import IMG_EXTENSIONS


def model_input(config: dict, images: list) -> torch.Tensor:
    """The uint8 NCHW batch of `images` (RGB PIL images or uint8 CHW tensors) as validation feeds the model: the
    model's evaluation resize, crop and interpolation."""
    resize, crop = eval_sizes(config)
    transform = eval_transform(resize_size=resize, crop_size=crop, interpolation=config.get("interpolation", "bilinear"))
    return stack_images([transform(im) for im in images])


def best_classes(logits: torch.Tensor, names: list, k: int) -> list:
    probs = logits.float().softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[(names[i], i, float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values.cpu(), top.indices.cpu())]


@torch.no_grad()
def predict(model: torch.nn.Module, config: dict, images: list, k: int = 5,
            device: torch.device | str = "cpu") -> list:
    """[(class name, class index, probability)] * k for each image (RGB PIL image or uint8 CHW tensor), best
    first; the images go through the model as one batch on `device`."""
    normalize = Normalizer(config["mean"], config["std"], device=device)  # the same step training used
    logits = model(normalize(model_input(config, images).to(device)))
    return best_classes(logits, config["class_names"], k)


class OnnxModel:
    """A file vgg16.export wrote, run by onnxruntime; `config` is what predict needs, from the file's metadata."""

    def __init__(self, path: str):
        try:
            import onnxruntime
        except ModuleNotFoundError:
            raise UsageError("onnxruntime is not installed: pip install -r requirements-export.txt") from None
        try:
            self.session = onnxruntime.InferenceSession(path, providers=onnxruntime.get_available_providers())
        except Exception as e:  # noqa: BLE001 - onnxruntime's own error types: a damaged or foreign file
            raise UsageError(f"--model {path}: onnxruntime cannot load it ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "vgg16.class_names" not in meta:
            raise UsageError(f"--model {path}: no vgg16 metadata (class names, mean, std): export it with "
                             "python -m vgg16.export")
        size = int(meta["vgg16.input_size"])
        self.config = {"class_names": json.loads(meta["vgg16.class_names"]), "mean": json.loads(meta["vgg16.mean"]),
                       "std": json.loads(meta["vgg16.std"]), "val_crop_size": size, "image_size": size,
                       "val_resize_size": int(meta["vgg16.resize_size"]), "interpolation": meta["vgg16.interpolation"]}
        self.uint8_input = meta["vgg16.input"].startswith("uint8")
        self.fp16 = meta["vgg16.input"].startswith("float16")
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: list, k: int = 5) -> list:
        batch = model_input(self.config, images)
        if not self.uint8_input:
            batch = Normalizer(self.config["mean"], self.config["std"], "cpu")(batch)
            batch = batch.half() if self.fp16 else batch
        logits = self.session.run(None, {self.input_name: batch.numpy()})[0]
        return best_classes(torch.from_numpy(logits), self.config["class_names"], k)


def image_paths(paths: Sequence[str]) -> list:
    """Files as given; folders as every image file under them, sorted (the extensions ImageFolder accepts)."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        elif path.exists():
            found.append(path)
        else:
            raise UsageError(f"{path}: no such file or folder")
    if not found:
        raise UsageError(f"no image files in {', '.join(paths)}")
    return found


def default_device() -> torch.device:
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    return accelerator or torch.device("cpu")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.predict", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True,
                        help="an output folder, a .safetensors file, a hub model id, or an .onnx file vgg16.export wrote")
    parser.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    parser.add_argument("--json", action="store_true", help="one JSON object per image instead of a text line")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", help="cpu, cuda, npu... (default: the accelerator if there is one)")
    parser.add_argument("images", nargs="+", help="image files and folders of images")
    args = parser.parse_args(argv)
    try:
        if args.top_k < 1 or args.batch_size < 1:
            raise UsageError("--top-k and --batch-size must be at least 1")
        device = torch.device(args.device) if args.device else default_device()
        if args.model.endswith(".onnx"):
            onnx_model = OnnxModel(args.model)
            classify = onnx_model.predict
        else:
            model = from_pretrained(args.model).to(device)
            classify = lambda images, k: predict(model, model.config, images, k, device)  # noqa: E731
        paths = image_paths(args.images)
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    unreadable = 0
    for start in range(0, len(paths), args.batch_size):
        readable, images = [], []
        for path in paths[start:start + args.batch_size]:
            try:
                images.append(decode_image({"path": str(path)}))
                readable.append(path)
            except BAD_IMAGE_ERRORS as e:  # one line per bad file; the others are still classified
                unreadable += 1
                print(f"error: cannot read image {path} ({one_line(e)})", file=sys.stderr, flush=True)
        if not images:
            continue
        for path, top in zip(readable, classify(images, args.top_k)):
            if args.json:
                print(json.dumps({"image": str(path), "top": [{"label": name, "index": i, "probability": round(p, 6)}
                                                              for name, i, p in top]}))
            else:
                print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, _, p in top))
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
