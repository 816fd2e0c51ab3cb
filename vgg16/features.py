"""CNN features of any weights on any data the trainer reads, and a linear probe on them.

    accelerate launch [--num_processes N] -m vgg16.features --pretrained [SPEC] --data DATA --output DIR \\
        [--layer fc7] [--linear-probe]

`--pretrained` (or `--model`) takes what training's `--pretrained` takes (vgg16.weights). Layers, by torchvision's
node names (`torchvision.models.feature_extraction.create_feature_extractor`): pool5 (`flatten`: what the
classifier reads), fc6 / fc7 (`classifier.1` / `classifier.4`: after their ReLU, as the 4096-d features of
Simonyan & Zisserman's Table 11), logits (`classifier.6`). Images get the weights' evaluation transform (resize,
centre crop, mean/std), in batches on the accelerator; with N processes each image is computed once and written
once (`gather_for_metrics`), by the main process, as DIR/train.parquet and DIR/validation.parquet (features,
label, row, path). `--linear-probe` then fits scikit-learn's multinomial logistic regression on the train
features and prints validation top-1/top-5 as the last line (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import tqdm
from datasets.arrow_writer import ParquetWriter
from torch.utils.data import DataLoader, Dataset

from .config import default_val_resize
from .data.pipeline import AugmentedDataset, collate_samples, eval_transform
from .engine import Normalizer
from .errors import RunFailure, UsageError, one_line
from .launch import default_workers
from .model import build_model, head_of, num_classes_of
from .data.sources import load_source
from .weights import Weights, resolve_weights

LAYERS = {"pool5": "flatten", "fc6": "classifier.1", "fc7": "classifier.4", "logits": "classifier.6"}


class _WithRow(Dataset):
    """(image, label, bad, row): the row number names the image in the output."""

    def __init__(self, dataset: AugmentedDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return (*self.dataset[index], index)

    def __getitems__(self, indices: list) -> list:
        return [(*sample, index) for sample, index in zip(self.dataset.__getitems__(indices), indices)]


def _model(weights: Weights, layer: str) -> torch.nn.Module:
    from torchvision.models.feature_extraction import create_feature_extractor

    if weights.features_only and layer != "pool5":
        raise UsageError(f"{weights.source} holds trained features only: its {layer} is not trained; use --layer pool5")
    model = build_model(weights.arch, num_classes_of(weights.state), head=head_of(weights.state))
    model.load_state_dict(weights.state)
    return create_feature_extractor(model.eval(), return_nodes={LAYERS[layer]: "out"})


def _paths(split) -> Optional[list]:
    """Each row's file path where the images are files (image folders); None where they are bytes in the data
    (parquet, CIFAR, the digits): reading the column would load every image, and the row number names them."""
    raw = split.cast_column("image", datasets.Image(decode=False))
    if len(raw) == 0 or raw[0]["image"].get("bytes"):
        return None
    return [r["path"] for r in raw["image"]]


def extract(accelerator: Accelerator, model, split, class_names: list, out: Path, *, sizes: tuple, interpolation: str,
            mean, std, batch_size: int, workers: int, desc: str) -> int:
    """Write `split`'s features to `out` (main process); return the rows written."""
    transform = eval_transform(resize_size=sizes[1], crop_size=sizes[2], interpolation=interpolation)
    loader = DataLoader(_WithRow(AugmentedDataset(split, transform, seed=0)), batch_size=batch_size,
                        collate_fn=collate_samples, num_workers=workers, pin_memory=accelerator.device.type != "cpu")
    loader = accelerator.prepare_data_loader(loader)
    normalize = Normalizer(mean, std, accelerator.device)
    paths = _paths(split) if accelerator.is_main_process else None
    writer, written = None, 0
    for images, labels, _, rows in tqdm(loader, desc=desc, main_process_only=True):
        with torch.no_grad(), accelerator.autocast():
            features = model(normalize(images))["out"].flatten(1).float()
        features, labels, rows = accelerator.gather_for_metrics((features, labels, rows))
        if not accelerator.is_main_process:
            continue
        if writer is None:
            schema = datasets.Features({"features": datasets.List(datasets.Value("float32"), length=features.shape[1]),
                                        "label": datasets.ClassLabel(names=list(class_names)),
                                        "row": datasets.Value("int64"), "path": datasets.Value("string")})
            writer = ParquetWriter(features=schema, path=str(out))
        rows = rows.cpu().tolist()
        writer.write_batch({"features": list(features.cpu().numpy()), "label": labels.cpu().tolist(), "row": rows,
                            "path": [paths[r] for r in rows] if paths else [None] * len(rows)})
        written += len(rows)
    if writer is not None:
        writer.finalize()
        writer.close()
    accelerator.wait_for_everyone()
    return written


def linear_probe(train_file: Path, val_file: Path, C: float = 1.0, seed: int = 0) -> dict:
    """Multinomial logistic regression (scikit-learn, lbfgs) on standardised train features; top-1/top-5 on
    the validation features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train = datasets.Dataset.from_parquet(str(train_file)).with_format("numpy")[:]  # every column as an array
    val = datasets.Dataset.from_parquet(str(val_file)).with_format("numpy")[:]
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000, random_state=seed))
    probe.fit(train["features"], train["label"])
    scores = probe.predict_proba(val["features"])
    classes = probe[-1].classes_
    ranked = classes[np.argsort(-scores, axis=1)[:, :5]]
    labels = val["label"]
    return {"probe": "logistic regression", "C": C, "train_images": len(train["label"]), "val_images": len(labels),
            "acc1": round(100.0 * float((ranked[:, 0] == labels).mean()), 3),
            "acc5": round(100.0 * float((ranked == labels[:, None]).any(1).mean()), 3)}


def _sizes(weights: Weights, image_size: Optional[int]) -> tuple:
    """(train crop, resize, crop): --image-size, else what the weights were made for (their meta or config.json)."""
    if image_size:
        small = image_size < 64
        return image_size, default_val_resize(image_size, small), image_size
    if head_of(weights.state) == "small":
        size = int(weights.config.get("image_size") or 32)
        return size, size, size
    return weights.sizes or (224, 256, 224)


def run(args: argparse.Namespace) -> dict:
    accelerator = Accelerator(mixed_precision=args.mixed_precision)
    with accelerator.local_main_process_first():
        weights = resolve_weights(args.pretrained, args.arch)
    with accelerator.main_process_first():
        source = load_source(args.data, args.seed)
    model = accelerator.prepare_model(_model(weights, args.layer), evaluation_mode=True)
    sizes = _sizes(weights, args.image_size)
    out = Path(args.output)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    workers = default_workers(args.workers, accelerator.num_processes)
    accelerator.print(f"{args.layer} features of {weights.source} on {source.name}: {len(source.train)} train / "
                      f"{len(source.val)} val images at {sizes[2]} px, {accelerator.num_processes} process(es) on "
                      f"{accelerator.device.type}", flush=True)
    started, counts = time.time(), {}
    for name, split in (("train", source.train), ("validation", source.val)):
        counts[name] = extract(accelerator, model, split, source.class_names, out / f"{name}.parquet", sizes=sizes,
                               interpolation=weights.interpolation or "bilinear",
                               mean=weights.mean, std=weights.std, batch_size=args.batch_size, workers=workers,
                               desc=name)
    result = {"layer": args.layer, "weights": weights.source, "data": source.name, "output": str(out),
              "train_rows": counts["train"], "validation_rows": counts["validation"],
              "seconds": round(time.time() - started, 1)}
    if accelerator.is_main_process:
        accelerator.print(f"wrote {counts['train']} train and {counts['validation']} validation rows to {out}")
        if args.linear_probe:
            result.update(linear_probe(out / "train.parquet", out / "validation.parquet", C=args.C, seed=args.seed))
        print(json.dumps(result), flush=True)
    accelerator.end_training()
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vgg16.features", description=__doc__.splitlines()[0])
    p.add_argument("--pretrained", "--model", dest="pretrained", nargs="?", const="", default="", metavar="WEIGHTS",
                   help="what train_vgg16.py --pretrained takes (default: torchvision's ImageNet weights of --arch)")
    p.add_argument("-a", "--arch", default="vgg16", help="for a torchvision weights name (default vgg16)")
    p.add_argument("--data", help="any --data the trainer reads (default: the embedded digits)")
    p.add_argument("--layer", choices=list(LAYERS), default="fc7", help="default fc7 (after its ReLU)")
    p.add_argument("--output", required=True, metavar="DIR", help="DIR/train.parquet, DIR/validation.parquet")
    p.add_argument("--image-size", type=int, help="centre crop (default: the weights' own)")
    p.add_argument("-b", "--batch-size", type=int, default=64, help="per process (default 64)")
    p.add_argument("-j", "--workers", type=int, help="loader workers per process (default: CPUs / processes)")
    p.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), help="default: the accelerate config's")
    p.add_argument("--linear-probe", action="store_true", help="fit a logistic regression, print val top-1/top-5")
    p.add_argument("--C", type=float, default=1.0, help="the probe's inverse regularisation strength (default 1)")
    p.add_argument("--seed", type=int, default=49, help="for the held-out split of folders without val/")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (UsageError, RunFailure) as e:  # exit codes as train_vgg16.py's (docs/faults.md)
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, UsageError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
