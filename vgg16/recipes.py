"""Named recipes: the values every option takes when you do not give it. One table, printed in full by
docs/recipes.md (`recipe_table_markdown`, checked by a test) and read by `--help`, so the three can never disagree.

A value may depend on the architecture: {"": 0.01, "_bn": 0.1} means 0.01 for plain VGG and 0.1 for the
batch-norm variants (torchvision trained them at those rates).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import UsageError


@dataclass(frozen=True)
class Recipe:
    name: str
    purpose: str
    anchor: str
    """The published run it follows, with its figure."""
    measured: str
    """What was measured here with it (or that nothing was)."""
    values: dict = field(default_factory=dict)


# Options every recipe sets, in the order the table in docs/recipes.md lists them. Options no recipe sets keep the
# TrainConfig default (momentum 0.9, seed 49, ...).
_COMMON = dict(
    epochs=90, batch_size=32, opt="sgd", lr=0.01, weight_decay=1e-4, norm_weight_decay=None, bias_weight_decay=None,
    lr_scheduler="step", lr_step_size=30, lr_gamma=0.1, lr_update="step", warmup_epochs=0.0, lr_warmup_method="linear",
    lr_warmup_decay=0.01, lr_min=0.0, label_smoothing=0.0, hflip=0.5, auto_augment=None, random_erase=0.0,
    mixup_alpha=0.0, cutmix_alpha=0.0, model_ema=False, ra_sampler=False, image_size=None, val_resize_size=None,
    val_crop_size=None, freeze_epochs=0, backbone_lr_scale=1.0,
)

RECIPES = {
    "torchvision": Recipe(
        "torchvision",
        "torchvision's VGG recipe; the default with --data",
        "torchvision's weights: VGG16 71.592, VGG16-BN 73.360 top-1 (8 GPUs x 32, 90 epochs, step 30)",
        "not run on ImageNet here (no accelerator)",
        {**_COMMON, "arch": "vgg16", "lr": {"": 0.01, "_bn": 0.1}},
    ),
    "ascend": Recipe(
        "ascend",
        "the Ascend ModelZoo scripts' run (8 NPUs x 32, apex O1 fp16)",
        "ModelZoo VGG16: 73.385 top-1 in 90 epochs",
        "not run on ImageNet here (no accelerator)",
        {**_COMMON, "arch": "vgg16", "lr_scheduler": "cosine", "lr_update": "epoch"},
    ),
    "modern": Recipe(
        "modern",
        "our bet to pass 74 (VGG16) / 75 (VGG16-BN) in 90 epochs",
        "torchvision's 2021 'new training recipe' (TrivialAugment, random erasing 0.1, mixup 0.2 / cutmix 1.0, "
        "label smoothing 0.1, EMA, no decay on norms, 176 px train / 232 -> 224 val, cosine with 5 warm-up "
        "epochs; ResNet50 76.1 -> 80.9) and the 'bag of tricks' runs behind VGG16-BN 74.50 (osmr/imgclsmob), "
        "shortened to 90 epochs; lr as torchvision's VGG weights",
        "not run on ImageNet here (no accelerator); on a small photo folder see below",
        {**_COMMON, "arch": "vgg16_bn", "lr": {"": 0.02, "_bn": 0.1}, "weight_decay": 5e-5, "norm_weight_decay": 0.0,
         "bias_weight_decay": 0.0, "lr_scheduler": "cosine", "warmup_epochs": 5.0, "label_smoothing": 0.1,
         "auto_augment": "ta_wide", "random_erase": 0.1, "mixup_alpha": 0.2, "cutmix_alpha": 1.0, "model_ema": True,
         "image_size": 176, "val_resize_size": 232, "val_crop_size": 224},
    ),
    "cifar10": Recipe(
        "cifar10",
        "VGG16-BN on CIFAR-10 (32 px, small-image head), toward 94.5",
        "chenyaofo/pytorch-cifar-models VGG16-BN 94.16 (200 epochs, SGD nesterov 0.1, cosine, wd 5e-4, batch 256), "
        "plus AutoAugment's CIFAR-10 policy and label smoothing",
        "not run on CIFAR-10 here (the data cannot be downloaded offline)",
        {**_COMMON, "arch": "vgg16_bn", "epochs": 200, "batch_size": 128, "opt": "sgd_nesterov", "lr": 0.1,
         "weight_decay": 5e-4, "lr_scheduler": "cosine", "warmup_epochs": 1.0, "label_smoothing": 0.1,
         "auto_augment": "cifar10"},
    ),
    "finetune": Recipe(
        "finetune",
        "from ImageNet (or any) weights on a dataset of its own; the default with --pretrained",
        "torchvision's transfer-learning tutorial (SGD, momentum 0.9, every layer trained, a new last layer); "
        "fastai's fine_tune and Keras' guide freeze first (--freeze-epochs, --backbone-lr-scale): that lost here",
        "digits 0-4 -> 5-9 from 8 images per class, 5 epochs at batch 8 (docs/finetuning.md): 55.8 top-1 "
        "(mean of 3 seeds) against 33.5 from scratch",
        {**_COMMON, "arch": "vgg16", "epochs": 10, "batch_size": 32, "lr": 0.01, "weight_decay": 1e-4,
         "lr_scheduler": "cosine", "warmup_epochs": 1.0},
    ),
    "digits": Recipe(
        "digits",
        "the embedded 1,437 digits on a 2-core CPU in about two minutes; the default without --data",
        "none (our own small set)",
        "98.889 top-1 in 8 epochs on 2 CPU cores (README quick start)",
        {**_COMMON, "arch": "vgg16_bn", "epochs": 8, "batch_size": 64, "lr": 0.05, "weight_decay": 5e-4,
         "lr_scheduler": "cosine", "warmup_epochs": 1.0, "hflip": 0.0},
    ),
}


# Options some recipe sets: their defaults are the recipe's (for the architecture the run trains), not a fixed one.
RECIPE_OPTIONS = frozenset(["arch", *_COMMON])


def recipe_value(recipe: str, option: str, arch: str | None = None):
    """The value `recipe` gives `option` (for `arch`, when the value depends on it)."""
    if recipe not in RECIPES:
        raise UsageError(f"unknown --recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    value = RECIPES[recipe].values[option]
    if isinstance(value, dict):
        return value["_bn"] if (arch or "").endswith("_bn") else value[""]
    return value


def describe(value) -> str:
    if isinstance(value, dict):
        return f"{value['']:g} ({value['_bn']:g} for _bn)"
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def help_default(option: str) -> str:
    """'torchvision 0.01 (0.1 for _bn); digits 0.05; ...' for --help (one value when all recipes agree)."""
    values = {describe(r.values[option]) for r in RECIPES.values()}
    if len(values) == 1:
        return f"{values.pop()} in every recipe"
    return "; ".join(f"{name} {describe(r.values[option])}" for name, r in RECIPES.items())


def recipe_table_markdown() -> str:
    """Every recipe and every value it sets, as docs/recipes.md shows it."""
    names = list(RECIPES)
    lines = ["| option | " + " | ".join(f"`{n}`" for n in names) + " |", "|---|" + "---|" * len(names)]
    options = ["arch", *_COMMON]
    for option in options:
        flag = "--" + option.replace("_", "-")
        lines.append(f"| `{flag}` | " + " | ".join(describe(RECIPES[n].values[option]) for n in names) + " |")
    for what in ("purpose", "anchor", "measured"):
        lines.append(f"| *{what}* | " + " | ".join(getattr(RECIPES[n], what) for n in names) + " |")
    return "\n".join(lines) + "\n"
