"""Starting from other weights: which weights, what of them goes into the model, and which part trains when.

- `start_weights`: --pretrained resolved (vgg16.weights); their architecture becomes the run's (vgg16.resolve).
- `start_model`: the run's model, with the starting weights or the checkpoint --evaluate --resume names.
- `load_start`: the weights into a freshly built model, replacing what does not fit this run (the last layer
  for other classes; the whole classifier for another head or for weights whose classifier is not valid), and
  saying what it did.
- `Freezing`: --freeze-features (the classifier alone, always) and --freeze-epochs N (the classifier alone for N
  epochs, then everything, as fastai's fine_tune). While a part is frozen its BatchNorm layers run in eval mode,
  so their running statistics stay as the weights had them (Keras' transfer-learning guide does the same).

How the frozen part is held still matters with several processes: DistributedDataParallel registers the
parameters that require grad when it wraps the model, so a parameter frozen by `requires_grad=False` at that time
and unfrozen later would never have its gradient all-reduced. --freeze-features never unfreezes, so it turns
gradients off (no backward through the features' weights: cheaper). --freeze-epochs keeps every parameter
registered and drops the frozen part's gradients before the optimizer step: SGD, AdamW and RMSprop then leave
those parameters, their momentum and weight decay untouched, and DDP's all-reduce stays the same all run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from .config import TrainConfig
from .errors import UsageError
from .model import build_model, check_state_dict, head_for, head_of, num_classes_of
from .weights import WEIGHTS, Weights, read_weights, resolve_weights


def start_weights(cfg: TrainConfig, accelerator, *, arch_given: Optional[str],
                  resume_dir: Optional[Path]) -> Optional[Weights]:
    """--pretrained resolved (one download per machine: the local main process first), before the run's config
    is: their architecture decides the recipe's values (vgg16.resolve). `cfg.arch` (--arch, else the recipe's)
    picks torchvision's weights for a bare name such as IMAGENET1K_V1; only an --arch given must match them."""
    if cfg.pretrained is None or (cfg.evaluate and resume_dir):
        return None
    with accelerator.local_main_process_first():
        weights = resolve_weights(cfg.pretrained, cfg.arch)
    if arch_given and arch_given != weights.arch:
        raise UsageError(f"--pretrained {cfg.pretrained} holds {weights.arch} weights, but --arch is {arch_given}: "
                         f"drop --arch (the weights decide it) or give {weights.arch} weights")
    return weights


def start_model(cfg: TrainConfig, *, class_names: list, weights: Optional[Weights],
                resume_dir: Optional[Path]) -> tuple[nn.Module, Optional[str]]:
    """The run's model, and what of the starting weights it holds, in words (None from scratch): the weights
    loaded (`load_start`), or with --evaluate --resume that checkpoint's, which must fit these classes."""
    head = head_for(cfg.image_size)
    model = build_model(cfg.arch, len(class_names), head=head, dropout=cfg.dropout)
    if weights is not None:
        return model, load_start(model, weights, class_names=class_names, head=head, evaluate=cfg.evaluate)
    if cfg.evaluate and resume_dir:
        state = read_weights(Path(resume_dir) / WEIGHTS)
        if num_classes_of(state) != len(class_names):
            raise UsageError(f"--resume {resume_dir} has {num_classes_of(state)} classes but the data has "
                             f"{len(class_names)}: evaluation needs weights trained on these classes")
        check_state_dict(model, state, f"--resume {resume_dir}")
        model.load_state_dict(state)
    return model, None


BACKBONE = "features."


def load_start(model: nn.Module, weights: Weights, *, class_names: list, head: str, evaluate: bool) -> str:
    """Load `weights` into `model` (built for this run); return what was loaded and replaced, in words."""
    state, ours = dict(weights.state), model.state_dict()
    features_only = weights.features_only or "classifier.6.weight" not in state
    theirs_head = head if features_only else head_of(state)
    theirs_classes = len(class_names) if features_only else num_classes_of(state)
    named = weights.config.get("class_names")  # our exports name their classes; compare only those
    other_classes = theirs_classes != len(class_names) or (named is not None and list(named) != list(class_names))
    if evaluate and (features_only or theirs_head != head or other_classes):
        raise UsageError(f"--pretrained {weights.source} was not trained on these {len(class_names)} classes at this "
                         "size: evaluation needs weights with this head and classes")
    if features_only or theirs_head != head:
        why = ("its classifier is not trained (features only)" if features_only else
               f"{'ImageNet-sized' if theirs_head == 'imagenet' else 'small-image'} head, "
               f"{'small' if head == 'small' else 'ImageNet-sized'} images")
        state = {k: v for k, v in state.items() if k.startswith(BACKBONE)}
        state.update({k: v for k, v in ours.items() if not k.startswith(BACKBONE)})
        done = (f"loaded the features (features.*) of {weights.source}; started a new "
                f"{'small-image' if head == 'small' else 'ImageNet'} head ({why})")
    elif other_classes:
        state = {k: v for k, v in state.items() if not k.startswith("classifier.6.")}
        state.update({k: v for k, v in ours.items() if k.startswith("classifier.6.")})
        done = (f"loaded {weights.source}; replaced the last layer (classifier.6: {theirs_classes} classes -> "
                f"{len(class_names)}" + (", other class names" if theirs_classes == len(class_names) else "") + ")")
    else:
        done = f"loaded {weights.source}: every layer"
    check_state_dict(model, state, f"--pretrained {weights.source}")
    model.load_state_dict(state)
    return done


@dataclass
class Freezing:
    """Which part of the model holds still in which epoch (module docstring)."""
    params: list
    norms: list
    always: bool
    epochs: int

    def frozen(self, epoch: int) -> bool:
        return self.always or epoch < self.epochs

    def hold(self, epoch: int) -> bool:
        """After model.train(): the frozen part's BatchNorm layers back to eval mode. Whether it is frozen."""
        frozen = self.frozen(epoch)
        for norm in self.norms if frozen else ():
            norm.eval()
        return frozen

    def drop_gradients(self) -> None:
        for p in self.params:
            p.grad = None

    def describe(self) -> str:
        return "features.*" if self.always else f"features.* for {self.epochs} epoch(s)"


def freezing_for(model: nn.Module, freeze_features: bool, freeze_epochs: int) -> Optional[Freezing]:
    """The Freezing of `model` (before it is prepared), or None when nothing is frozen."""
    if not freeze_features and not freeze_epochs:
        return None
    features = model.features
    params = list(features.parameters())
    if freeze_features:
        for p in params:
            p.requires_grad_(False)
    norms = [m for m in features.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return Freezing(params, norms, always=freeze_features, epochs=freeze_epochs)

