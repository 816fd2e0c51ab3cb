"""Top-5 classes of images with an exported model.

    python -m vgg16.predict --model output cat.jpg dog.png
    python -m vgg16.predict --model user/vgg16-digits digit.png     # a hub model id
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import torch

from .data import BAD_IMAGE_ERRORS, decode_image, eval_sizes, eval_transform
from .engine import Normalizer
from .errors import UsageError, one_line
from .hub import from_pretrained


@torch.no_grad()
def predict(model: torch.nn.Module, config: dict, images: list, k: int = 5) -> list:
    """[(class name, probability)] * k for each image (RGB PIL image or uint8 CHW tensor), best first."""
    resize, crop = eval_sizes(config)
    transform = eval_transform(resize_size=resize, crop_size=crop, interpolation=config.get("interpolation", "bilinear"))
    normalize = Normalizer(config["mean"], config["std"], device="cpu")  # the same step training used
    probs = model(normalize(torch.stack([transform(im) for im in images]))).softmax(dim=1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    names = config["class_names"]
    return [[(names[i], float(p)) for p, i in zip(ps, ids)] for ps, ids in zip(top.values, top.indices)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vgg16.predict", description="Top-5 classes of images.")
    parser.add_argument("--model", required=True, help="an output folder, a .safetensors file or a hub model id")
    parser.add_argument("images", nargs="+")
    args = parser.parse_args(argv)
    try:
        model, config = from_pretrained(args.model)
        images = []
        for path in args.images:
            try:
                images.append(decode_image({"path": path}))
            except BAD_IMAGE_ERRORS as e:
                raise UsageError(f"cannot read image {path} ({e})") from None
    except UsageError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    for path, top in zip(args.images, predict(model, config, images)):
        print(f"{path}: " + ", ".join(f"{name} {100 * p:.1f}%" for name, p in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
