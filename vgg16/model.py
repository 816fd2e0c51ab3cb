"""The VGG family on torchvision's definitions, plus a small-image head for CIFAR-sized inputs.

No Accelerate here: a model is a plain `nn.Module` whose state_dict uses torchvision's keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Optional

from torch import nn
from torchvision import models

from .data.pipeline import IMAGENET_MEAN, IMAGENET_STD, eval_sizes
from .errors import UsageError

if TYPE_CHECKING:
    from .config import TrainConfig
    from .weights import Weights

# Below this input size the five max-pools leave at most a 1x1 map, and torchvision's head (7x7x512 -> 4096)
# would spend 119M of VGG16's 134M parameters on upsampled copies of one pixel.
SMALL_IMAGE_LIMIT = 64
SMALL_HEAD_WIDTH = 512


def head_for(image_size: int) -> str:
    """'small' (global pool, 512-wide classifier) for inputs below 64 px, else torchvision's 'imagenet' head."""
    return "small" if image_size < SMALL_IMAGE_LIMIT else "imagenet"


def build_model(arch: str, num_classes: int, *, head: str = "imagenet", dropout: float = 0.5) -> nn.VGG:
    """A randomly initialised VGG from torchvision.

    head='imagenet' is torchvision's model exactly (same keys, shapes, init). head='small' keeps the features and
    the classifier's layout (so keys are still `classifier.0/3/6`) but pools to 1x1 and uses 512-wide layers with
    PyTorch's default init: about 15M parameters for VGG16 instead of 134M.
    """
    builder = getattr(models, arch, None)
    if builder is None or not arch.startswith("vgg"):
        raise UsageError(f"unknown arch {arch!r}")
    model: nn.VGG = builder(weights=None, num_classes=num_classes, dropout=dropout)
    if head == "small":
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        width = SMALL_HEAD_WIDTH
        # torchvision's classifier layout, so the keys stay classifier.0/3/6.
        layers = [nn.Linear(512, width), nn.ReLU(True), nn.Dropout(dropout),
                  nn.Linear(width, width), nn.ReLU(True), nn.Dropout(dropout),
                  nn.Linear(width, num_classes)]
        model.classifier = nn.Sequential(*layers)
        # PyTorch's default nn.Linear init, not torchvision's normal(0, 0.01): at 512 wide, 0.01 shrinks the signal
        # about 9x per layer, so the logits start near zero and the gradients reaching the features are tiny.
        # Measured on the digits folder (vgg16_bn, 5 epochs, docs/recipes.md "Small-image head"): 87.5% -> 97.8% top-1.
    elif head != "imagenet":
        raise UsageError(f"unknown head {head!r}: use 'imagenet' or 'small'")
    return model


def num_classes_of(state_dict: dict) -> int:
    return int(state_dict["classifier.6.weight"].shape[0])


def head_of(state_dict: dict) -> str:
    return "small" if state_dict["classifier.0.weight"].shape[1] == 512 else "imagenet"


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_state_dict(model: nn.Module, state_dict: dict, source: str) -> None:
    """Refuse weights whose keys or shapes do not match, naming the first difference."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    extra = sorted(set(state_dict) - set(expected))
    if missing or extra:
        what = f"missing {missing[:3]}" if missing else f"unexpected {extra[:3]}"
        raise UsageError(f"{source} does not fit this model ({what}): check --arch and --image-size")
    for key, tensor in expected.items():
        if tuple(state_dict[key].shape) != tuple(tensor.shape):
            raise UsageError(f"{source} does not fit this model: {key} is {tuple(state_dict[key].shape)}, "
                             f"expected {tuple(tensor.shape)}; check --arch and --image-size")


@dataclass(frozen=True)
class ModelConfig:
    """A model folder's config.json (before `with_timm_fields` adds timm's keys): what vgg16.hub, predict and a
    torchvision or timm user need to rebuild the model and feed it."""
    arch: str
    num_classes: int
    image_size: int
    head: str
    dropout: float
    class_names: list
    mean: list
    std: list
    val_resize_size: int
    val_crop_size: int
    interpolation: str
    recipe: str
    weights: str = "model"
    """Which weights the folder holds: the model's, or its EMA's when the average validated better."""
    library: str = "vgg16"
    pretrained: Optional[str] = None
    """What --pretrained was given; started_from says what of it was kept, base_model names its hub repo."""
    started_from: Optional[str] = None
    base_model: Optional[str] = None
    frozen: Optional[str] = None
    backbone_lr_scale: Optional[float] = None

    @classmethod
    def for_run(cls, cfg: "TrainConfig", *, class_names: list, weights: Optional["Weights"] = None,
                started_from: Optional[str] = None, frozen: Optional[str] = None) -> "ModelConfig":
        """The config.json of the model a run trains: its options, its data's classes, the input its starting
        weights expect (ImageNet's mean and std without them)."""
        return cls(arch=cfg.arch, num_classes=len(class_names), image_size=cfg.image_size,
                   head=head_for(cfg.image_size), dropout=cfg.dropout, class_names=list(class_names),
                   mean=list(weights.mean if weights else IMAGENET_MEAN), std=list(weights.std if weights else IMAGENET_STD),
                   val_resize_size=cfg.val_resize_size, val_crop_size=cfg.val_crop_size,
                   interpolation=cfg.interpolation, recipe=cfg.recipe,
                   pretrained=weights.source if weights else None, started_from=started_from,
                   base_model=weights.hub_id if weights else None, frozen=frozen,
                   backbone_lr_scale=cfg.backbone_lr_scale if cfg.backbone_lr_scale != 1.0 else None)

    def exported_as(self, weights: Optional[str]) -> "ModelConfig":
        """This config for the weights exported: the model's, or its EMA's ("ema")."""
        return replace(self, weights=weights or "model")

    def to_dict(self) -> dict:
        """The keys that are set (a run from scratch has no pretrained, frozen, ... keys)."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def with_timm_fields(config: dict) -> dict:
    """config.json plus what timm reads from it (`timm.create_model("local-dir:DIR")`, `"hf-hub:USER/NAME"`):
    architecture, num_classes, label_names and a pretrained_cfg with the evaluation transform we use. timm's VGG
    loader maps torchvision's keys itself (timm/models/vgg.py, _filter_fn). The small-image head has no timm
    counterpart: those configs are returned unchanged (their model card says so)."""
    if config.get("head", "imagenet") != "imagenet":
        return dict(config)
    resize, crop = eval_sizes({"image_size": 224, **config})
    return {**config, "architecture": config["arch"], "num_classes": config["num_classes"],
            "label_names": list(config.get("class_names") or [str(i) for i in range(config["num_classes"])]),
            "pretrained_cfg": {"input_size": [3, crop, crop], "interpolation": config.get("interpolation", "bilinear"),
                               "crop_pct": round(crop / resize, 4), "crop_mode": "center",
                               "mean": list(config.get("mean", IMAGENET_MEAN)),
                               "std": list(config.get("std", IMAGENET_STD)),
                               "num_classes": config["num_classes"], "first_conv": "features.0",
                               "classifier": "head.fc"}}
