"""The top classes of images with an exported model, in batches on the device.

    python -m vgg16.predict --model output cat.jpg dog.png
    python -m vgg16.predict --model user/vgg16-digits photos/ --top-k 3 --json    # a folder, a hub model id
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


@torch.no_grad()
def predict(model: torch.nn.Module, config: dict, images: list, k: int = 5,
            device: torch.device | str = "cpu") -> list:
    """[(class name, class index, probability)] * k for each image (RGB PIL image or uint8 CHW tensor), best
    first; the images go through the model as one batch on `device`."""
    resize, crop = eval_sizes(config)
    transform = eval_transform(resize_size=resize, crop_size=crop, interpolation=config.get("interpolation", "bilinear"))
    normalize = Normalizer(config["mean"], config["std"], device=device)  # the same step training used
    batch = stack_images([transform(im) for im in images]).to(device)
    probs = model(normalize(batch)).float().softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    names = config["class_names"]
    return [[(names[i], i, float(p)) for p, i in zip(ps.tolist(), ids.tolist())]
            for ps, ids in zip(top.values.cpu(), top.indices.cpu())]


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
    parser.add_argument("--model", required=True, help="an output folder, a .safetensors file or a hub model id")
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
        model = from_pretrained(args.model).to(device)
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
        for path, top in zip(readable, predict(model, model.config, images, args.top_k, device)):
            if args.json:
                print(json.dumps({"image": str(path), "top": [{"label": name, "index": i, "probability": round(p, 6)}
                                                              for name, i, p in top]}))
            else:
                print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, _, p in top))
    return 1 if unreadable else 0


if __name__ == "__main__":
    sys.exit(main())
