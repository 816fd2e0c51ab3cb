"""The plain PyTorch loop a user would write without this project, for checking that our trainer costs no
accuracy: torchvision's ImageFolder with PIL, v2 transforms on float tensors, torchvision's VGG with the same
small-image head, SGD with warm-up + cosine per step, no Accelerate.

    python -m vgg16.tools.plain_loop --data DIR -a vgg16_bn --image-size 32 --epochs 5 --batch-size 64 --lr 0.05 \
        --warmup-epochs 1 --weight-decay 5e-4

prints top-1 after every epoch and a JSON line at the end (with macro-F1 and each class's recall, scikit-learn's).
For imbalanced data, `--class-weights balanced` (scikit-learn's weights in the loss) and `--weighted-sampler`
(torch's WeightedRandomSampler, 1 / class count per image, as many draws as images) are the plain ways. Compare with `train_vgg16.py` given the same options
and `--hflip 0 --lr-scheduler cosine`. Deliberately independent of vgg16.data.pipeline/engine/optim: it shares nothing with
the trainer but the idea of the head.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Optional, Sequence

import torch
from torch import nn
from torchvision import datasets, models
from torchvision.transforms import v2

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def small_head_vgg(arch: str, num_classes: int, dropout: float) -> nn.Module:
    """torchvision's VGG, global-pooled with a 512-wide classifier in PyTorch's default init (below 64 px)."""
    model = getattr(models, arch)(weights=None, num_classes=num_classes, dropout=dropout)
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    layers = [nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(dropout),
              nn.Linear(512, 512), nn.ReLU(True), nn.Dropout(dropout), nn.Linear(512, num_classes)]
    model.classifier = nn.Sequential(*layers)
    return model


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vgg16.tools.plain_loop", description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="folder with train/ and val/ class folders")
    p.add_argument("-a", "--arch", default="vgg16_bn")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=49)
    p.add_argument("--class-weights", choices=("balanced",), help="weigh the loss by scikit-learn's balanced weights")
    p.add_argument("--weighted-sampler", action="store_true", help="torch's WeightedRandomSampler, class-balanced")
    p.add_argument("--init-from", metavar="FILE.safetensors",
                   help="start from these torchvision-keyed weights, with a new last layer (fine-tuning every layer)")
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    size = args.image_size
    train_tf = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.RandomCrop(size, padding=4),
                           v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    val_tf = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size),
                         v2.ToDtype(torch.float32, scale=True), v2.Normalize(MEAN, STD)])
    train_set = datasets.ImageFolder(os.path.join(args.data, "train"), train_tf)  # PIL, converted to RGB
    val_set = datasets.ImageFolder(os.path.join(args.data, "val"), val_tf)
    targets = torch.tensor(train_set.targets)
    counts = torch.bincount(targets, minlength=len(train_set.classes)).double()
    sampler = torch.utils.data.WeightedRandomSampler((1.0 / counts)[targets], num_samples=len(targets)) \
        if args.weighted_sampler else None
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=sampler is None,
                                               sampler=sampler, drop_last=True, num_workers=args.workers)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, num_workers=args.workers)

    model = small_head_vgg(args.arch, len(train_set.classes), args.dropout)
    if args.init_from:
        from safetensors.torch import load_file

        state = {k: v for k, v in load_file(args.init_from).items() if not k.startswith("classifier.6.")}
        model.load_state_dict(state, strict=False)  # strict but for the new last layer
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.weight_decay)
    steps_per_epoch = len(train_loader)
    total, warmup = args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    weights = counts.sum() / (len(counts) * counts) if args.class_weights else None  # compute_class_weight's
    criterion = nn.CrossEntropyLoss(weight=weights.float() if weights is not None else None)
    history, started = [], time.time()
    for epoch in range(args.epochs):
        model.train()
        for images, labels in train_loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        model.eval()
        guesses, truth = [], []
        with torch.no_grad():
            for images, labels in val_loader:
                guesses += model(images).argmax(1).tolist()
                truth += labels.tolist()
        correct, count = sum(g == t for g, t in zip(guesses, truth)), len(truth)
        history.append(100.0 * correct / count)
        print(f"epoch {epoch + 1}/{args.epochs}  acc1 {history[-1]:.3f}  over {count} images", flush=True)
    from sklearn.metrics import f1_score, recall_score

    print(json.dumps({"acc1": history[-1], "history": history, "seconds": round(time.time() - started, 1),
                      "macro_f1": 100 * f1_score(truth, guesses, average="macro"),
                      "recall": [round(100 * r, 1) for r in recall_score(truth, guesses, average=None)]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
