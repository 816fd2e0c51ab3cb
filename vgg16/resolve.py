"""From what a run was asked for to its config, in one step and in one order:

    the declared defaults -> the recipe's values for the run's architecture -> a --config file -> the command line

The architecture is known before any recipe value is taken: --arch, else the starting weights' own (read off
them by the runner, `RunFacts.weights_arch`), else the recipe's. The three sizes also follow the data (CIFAR-sized
images take 32 px) and the weights' own sizes; the loader workers and the precision follow the launch. Those
facts come in `RunFacts`; the runner resolves twice: once before anything is loaded, with no facts (every rule
is checked at once and the launch options, which depend on no fact, start the processes), then with them, for
the config the run uses and saves. The result is a frozen `TrainConfig` in which every option has its value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .config import SIZE_OPTIONS, TrainConfig, check_rules, default_val_resize
from .launch import default_workers
from .options import check_value, declared
from .recipes import RECIPE_OPTIONS, recipe_value


@dataclass(frozen=True)
class GivenOptions:
    """The options a run was given, layer by layer (field name -> value; only the options given)."""
    command_line: Mapping[str, Any] = field(default_factory=dict)
    config_file: Mapping[str, Any] = field(default_factory=dict)
    config_path: Optional[str] = None
    """The --config file the second layer was read from."""
    notes: tuple = ()
    """What the command-line layer said of the old scripts' flags it mapped (printed at start)."""
    command: str = ""
    """The command as typed: run.yaml's header and results.json."""

    @property
    def values(self) -> dict:
        return {**self.config_file, **self.command_line}

    def where(self, name: str, flag: str, key: str) -> str:
        """Where a given value came from, for an error line: the flag, or the file and its key."""
        return flag if name in self.command_line else f"--config {self.config_path}: {key}"


@dataclass(frozen=True)
class RunFacts:
    """What the options' values depend on besides the options (None or False: not known yet)."""
    weights_arch: Optional[str] = None
    """The architecture of the starting weights (--pretrained), read off them."""
    weights_sizes: Optional[tuple] = None
    """(train crop, validation resize, validation crop) the starting weights were made for, where they say."""
    weights_interpolation: Optional[str] = None
    """The resize interpolation of the starting weights' evaluation transform, where they say."""
    small_images: bool = False
    """The data's images are CIFAR-sized (below 64 px)."""
    mixed_precision: Optional[str] = None
    """The precision the launch runs (an accelerate config may choose it)."""
    workers: Optional[int] = None
    """Loader workers per process by default for this launch (vgg16.launch.default_workers)."""


def default_recipe(given: Mapping[str, Any]) -> str:
    """finetune with --pretrained (unless only evaluating), digits on the embedded data, torchvision otherwise."""
    if given.get("pretrained") is not None and not given.get("evaluate"):
        return "finetune"
    embedded = given.get("dataset", "auto") == "digits" or (given.get("dataset", "auto") == "auto"
                                                            and not given.get("data"))
    return "digits" if embedded else "torchvision"


def resolve_sizes(given: Mapping[str, Any], recipe: str, facts: RunFacts) -> tuple[int, int, int]:
    """(training crop, validation resize, validation crop).

    For ImageNet-sized images when none of the three is given: the starting weights' own sizes, else the
    recipe's (modern: 176 / 232 / 224). Otherwise unset ones follow from the training crop: validation crop =
    training crop, resize = crop x 256/224 (torchvision's ratio), or no margin at all below 64 px (CIFAR, digits)."""
    train, resize, crop = (given.get(name) for name in SIZE_OPTIONS)
    small = facts.small_images
    if not small and (train, resize, crop) == (None, None, None):
        if facts.weights_sizes:
            return tuple(facts.weights_sizes)  # type: ignore[return-value]
        sizes = tuple(recipe_value(recipe, name) for name in SIZE_OPTIONS)
        if None not in sizes:
            return sizes  # type: ignore[return-value]
    train = train or (32 if small else 224)
    crop = crop or train
    return train, resize or default_val_resize(crop, small), crop


def resolve_config(given: GivenOptions, facts: RunFacts = RunFacts()) -> TrainConfig:
    """The run's config (module docstring). Every value is checked against its declaration once, here, and a
    wrong one is named where it came from (the flag, the file and key, or the recipe)."""
    values = given.values
    recipe = values.get("recipe") or default_recipe(values)
    arch = values.get("arch") or facts.weights_arch or recipe_value(recipe, "arch")
    out: dict[str, Any] = {}
    for f, o in declared(TrainConfig):
        if f.name in values:
            value, where = values[f.name], given.where(f.name, o.long_flag, o.key)
        elif f.name in RECIPE_OPTIONS:
            value, where = recipe_value(recipe, f.name, arch), f"--recipe {recipe}: {o.key}"
        else:
            value, where = o.default, o.long_flag
        check_value(o, value, where)
        out[f.name] = value
    # The values that follow other values or the facts, where not given.
    out.update(recipe=recipe, arch=arch, **dict(zip(SIZE_OPTIONS, resolve_sizes(values, recipe, facts))))
    if values.get("num_classes") is None and out["dataset"] == "synthetic":
        out["num_classes"] = 1000
    if values.get("workers") is None:
        out["workers"] = facts.workers if facts.workers is not None else default_workers(None, 1)
    if values.get("val_batch_size") is None:
        out["val_batch_size"] = out["batch_size"]
    if values.get("interpolation") is None and facts.weights_interpolation:
        out["interpolation"] = facts.weights_interpolation
    if values.get("mixed_precision") is None:
        out["mixed_precision"] = facts.mixed_precision
    if out["freeze_features"] and "freeze_epochs" not in values:
        out["freeze_epochs"] = 0  # frozen all run: the recipe's unfreezing does not apply
    if out["nesterov"] and out["opt"] == "sgd":
        out["opt"] = "sgd_nesterov"
    cfg = TrainConfig(**out)
    check_rules(cfg)
    return cfg


def config_of(**values: Any) -> TrainConfig:
    """A config as code builds it: these options as if given on the command line, the rest resolved."""
    return resolve_config(GivenOptions(command_line=values))
