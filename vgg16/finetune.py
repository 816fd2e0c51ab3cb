"""Starting from other weights: which weights, what of them goes into the model, and which part trains when.

- `start_weights`: --pretrained resolved (vgg16.weights) and the run's architecture taken from the weights.
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

import dataclasses
from dataclasses import dataclass
from typing import Optional

from torch import nn

from .config import TrainConfig
from .errors import UsageError
from .model import check_state_dict, head_of, num_classes_of
from .recipes import recipe_value
from .weights import Weights, resolve_weights


def start_weights(cfg: TrainConfig, accelerator) -> tuple[TrainConfig, Optional[Weights]]:
    """--pretrained resolved (one download per machine: the local main process first), and the config with the
    weights' architecture unless --arch chose one."""
    if cfg.pretrained is None or (cfg.evaluate and cfg.resume):
        return cfg, None
    with accelerator.local_main_process_first():
        weights = resolve_weights(cfg.pretrained, cfg.arch or recipe_value(cfg.recipe, "arch"))
    if cfg.arch and cfg.arch != weights.arch:
        raise UsageError(f"--pretrained {cfg.pretrained} holds {weights.arch} weights, but --arch is {cfg.arch}: "
                         f"drop --arch (the weights decide it) or give {weights.arch} weights")
    return dataclasses.replace(cfg, arch=weights.arch), weights


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

