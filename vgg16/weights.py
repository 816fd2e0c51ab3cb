"""Where a run's starting weights come from: every kind a user has, read into torchvision's VGG keys.

`resolve_weights(spec, arch)` takes what `--pretrained` (and `python -m vgg16.features`) are given:
- '' (the bare flag of the old scripts): torchvision's default ImageNet weights for `arch`;
- a torchvision weights name: `IMAGENET1K_V1`, `DEFAULT`, `IMAGENET1K_FEATURES`, or `VGG16_BN_Weights.IMAGENET1K_V1`,
  through torchvision's weights API and its cache ($TORCH_HOME/hub/checkpoints);
- a file: `.safetensors`, or a torchvision `.pth` read with `torch.load(weights_only=True)`;
- a folder: one of our exports, or a model folder timm saved (`timm.models.save_for_hf`);
- a hub model id: ours (`USER/NAME`) or timm's (`timm/vgg16.tv_in1k`, `hf-hub:timm/vgg16_bn.tv_in1k`).
It returns the state_dict with torchvision's keys (timm's VGG keys converted back) and the input the weights
expect (mean, std, sizes), from torchvision's weights meta, timm's pretrained_cfg or our config.json.
"""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from huggingface_hub import is_offline_mode
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import INTERPOLATIONS, default_val_resize
from .data.pipeline import IMAGENET_MEAN, IMAGENET_STD
from .errors import UsageError

WEIGHTS = "model.safetensors"
MODEL_CONFIG = "config.json"
# Read from hub repos that have no safetensors file (older timm uploads); loaded with weights_only=True.
PICKLED_WEIGHTS = "pytorch_model.bin"


@dataclass(frozen=True)
class Weights:
    state: dict
    """The state_dict, torchvision keys."""
    source: str
    """What was loaded, for the start-up line, config.json and the model card."""
    arch: str
    """The VGG variant the tensors are for (read off the tensors)."""
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    crop: Optional[int] = None
    """The evaluation crop the weights were made for (None: not known, e.g. a bare safetensors file)."""
    resize: Optional[int] = None
    interpolation: Optional[str] = None
    """The resize interpolation of the weights' evaluation transform, where they say (bilinear, bicubic)."""
    class_names: Optional[list] = None
    """The classes, where the weights say (torchvision's categories, our config's class_names, timm's label_names)."""
    features_only: bool = False
    """Only features.* is valid (torchvision's IMAGENET1K_FEATURES): the classifier starts new."""
    hub_id: Optional[str] = None
    """The hub repo the weights came from: the model card's base_model."""
    config: dict = field(default_factory=dict)
    """The config.json beside the weights (ours or timm's), {} when there is none."""

    @property
    def sizes(self) -> Optional[tuple]:
        """(train crop, validation resize, validation crop) the weights expect, when they say."""
        return (self.crop, self.resize or default_val_resize(self.crop, False), self.crop) if self.crop else None


def infer_arch(state: dict) -> str:
    """The VGG variant of a torchvision state_dict: conv count (8/10/13/16) and batch norm."""
    convs = sum(1 for k, v in state.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4)
    depth = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}.get(convs)
    if depth is None:
        raise UsageError(f"these weights have {convs} conv layers: not a VGG11/13/16/19")
    return depth + ("_bn" if any(k.endswith("running_mean") for k in state) else "")


def torchvision_keys(state: dict) -> dict:
    """torchvision's keys for a state_dict in torchvision's, timm's or DDP's spelling.

    timm's VGG keeps torchvision's `features.*` and holds the classifier as convolutions (`pre_logits.fc1` is a
    7x7 conv of `classifier.0`, `pre_logits.fc2` a 1x1 conv of `classifier.3`, `head.fc` is `classifier.6`):
    the reverse of timm's own _filter_fn (timm/models/vgg.py), a rename and a reshape."""
    renames = {"pre_logits.fc1.": "classifier.0.", "pre_logits.fc2.": "classifier.3.", "head.fc.": "classifier.6."}
    out = {}
    for key, tensor in state.items():
        key = key.removeprefix("module.").removeprefix("_orig_mod.")  # saved from a DDP or compiled model
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key in ("classifier.0.weight", "classifier.3.weight") and tensor.dim() == 4:
            tensor = tensor.reshape(tensor.shape[0], -1)
        out[key] = tensor
    return out


def _torchvision_enum(spec: str, arch: str):
    """torchvision's weights enum member that `spec` names, or None when it names none."""
    from torchvision.models import get_model_weights, get_weight

    if "_Weights." in spec:
        try:
            return get_weight(spec)
        except (ValueError, KeyError, AttributeError):
            raise UsageError(f"--pretrained {spec}: torchvision has no such weights") from None
    members = get_model_weights(arch).__members__
    if spec == "":
        return members["DEFAULT"]
    if spec in members:
        return members[spec]
    if spec.isupper() and "/" not in spec and not Path(spec).exists():
        raise UsageError(f"--pretrained {spec}: torchvision's {arch} weights are {', '.join(members)}")
    return None


def _from_torchvision(member) -> Weights:
    """torchvision's own weights through its weights API and cache. Like torchvision, the hash in the file name
    is checked when the file is downloaded, not on every read of the cache."""
    url, name = member.url, member.url.rsplit("/", 1)[-1]
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    label = f"torchvision {type(member).__name__}.{member.name}"
    where = f"download {url} and put it in {folder} (or set TORCH_HOME)"
    # HF_HUB_OFFLINE (huggingface_hub's switch, which `datasets` follows too) also keeps torchvision from trying.
    if not (folder / name).exists() and is_offline_mode():
        raise UsageError(f"--pretrained: {label} is {name}, not in {folder} and the hub is offline: {where}")
    try:
        state = member.get_state_dict(progress=False, check_hash=True, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"--pretrained: {folder / name} holds more than tensors ({str(e).splitlines()[0]}): "
                         f"delete it and {where}") from None
    except Exception as e:  # no network, a refused download, a bad hash, a damaged file: one line for them all
        raise UsageError(f"--pretrained: could not load {label} ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): {where}") from None
    transform = member.transforms()
    acc1 = member.meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
    features_only = member.meta.get("categories") is None
    source = (f"{label} ({name}" + (f", ImageNet top-1 {acc1}" if acc1 and not math.isnan(acc1) else "")
              + (", features only" if features_only else "") + ")")
    return Weights(torchvision_keys(state), source, infer_arch(state), mean=tuple(transform.mean),
                   std=tuple(transform.std), crop=transform.crop_size[0], resize=transform.resize_size[0],
                   interpolation=transform.interpolation.value, class_names=member.meta.get("categories"),
                   features_only=features_only)


def _read_pickled(path: Path, spec: str) -> dict:
    """A torchvision .pth (a bare state_dict, or one under 'model'/'state_dict' as training scripts save it),
    read without running code: a file that needs more than tensors and plain containers is refused."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UsageError(f"--pretrained {spec}: the file holds more than tensors, so it is not read (loading it could "
                         f"run code: {str(e).splitlines()[0]}); if you trust it, save its state_dict alone with "
                         "torch.save(state_dict, 'weights.pth')") from None
    except (RuntimeError, OSError, EOFError) as e:
        raise UsageError(f"--pretrained {spec}: not a readable PyTorch file ({str(e).splitlines()[0]})") from None
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"--pretrained {spec}: the file holds no state_dict of tensors")
    return obj


def read_weights(path: Path) -> dict:
    """A state_dict from a safetensors file: no pickle, no code."""
    if not path.is_file():
        raise UsageError(f"{path}: no such weights file")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UsageError(f"{path} is not a readable safetensors file ({e})") from None


def _read_any(path: Path, spec: str) -> dict:
    return read_weights(path) if path.suffix == ".safetensors" else _read_pickled(path, spec)


def _download_from_hub(repo_id: str) -> tuple[Path, Optional[Path]]:
    """(weights, config.json or None) of a hub model repo, through huggingface_hub's cache."""
    from huggingface_hub import hf_hub_download

    weights, errors = None, []
    for name in (WEIGHTS, PICKLED_WEIGHTS):
        try:
            weights = Path(hf_hub_download(repo_id, name))
            break
        except Exception as e:  # offline, unknown repo, no access, no such file: one line for all of them
            errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if weights is None:
        raise UsageError(f"--pretrained {repo_id}: not a local path, and the hub gave no {WEIGHTS} ({errors[0]})")
    try:
        config: Optional[Path] = Path(hf_hub_download(repo_id, MODEL_CONFIG))
    except Exception:  # noqa: BLE001 - a repo without config.json: the weights say the rest
        config = None
    return weights, config


def _input_of(config: dict) -> dict:
    """mean, std, crop, resize and class names from our config.json or timm's (pretrained_cfg)."""
    timm_cfg = config.get("pretrained_cfg") or {}
    out = {"mean": tuple(config.get("mean") or timm_cfg.get("mean") or IMAGENET_MEAN),
           "std": tuple(config.get("std") or timm_cfg.get("std") or IMAGENET_STD),
           "class_names": config.get("class_names") or config.get("label_names"),
           "interpolation": next((i for i in (config.get("interpolation"), timm_cfg.get("interpolation"))
                                  if i in INTERPOLATIONS), None)}
    crop = config.get("val_crop_size") or (timm_cfg.get("input_size") or [None])[-1]
    if config.get("head", "imagenet") == "imagenet" and crop:
        resize = config.get("val_resize_size") or (round(crop / timm_cfg["crop_pct"]) if timm_cfg.get("crop_pct")
                                                   else None)
        out.update(crop=int(crop), resize=int(resize) if resize else None)
    return out


def resolve_weights(spec: str, arch: str) -> Weights:
    """The weights `spec` names (module docstring); `arch` picks torchvision's weights for a bare name."""
    spec = str(spec)
    member = _torchvision_enum(spec, arch) if not spec.startswith("hf-hub:") else None
    if member is not None:
        return _from_torchvision(member)
    hub_id = spec.removeprefix("hf-hub:") if spec.startswith("hf-hub:") else None
    path = Path(spec).expanduser()
    if hub_id is None and path.is_dir():
        weights = next((path / n for n in (WEIGHTS, PICKLED_WEIGHTS) if (path / n).exists()), None)
        if weights is None:
            raise UsageError(f"--pretrained {spec}: no {WEIGHTS} in that folder")
        config_path: Optional[Path] = path / MODEL_CONFIG
    elif hub_id is None and path.is_file():
        weights, config_path = path, path.with_name(MODEL_CONFIG) if path.suffix == ".safetensors" else None
    elif hub_id or (spec.count("/") == 1 and not spec.startswith((".", "/", "~"))):
        hub_id = hub_id or spec
        weights, config_path = _download_from_hub(hub_id)
    else:
        raise UsageError(f"--pretrained {spec}: no such file or folder, nor a torchvision weights name "
                         "(IMAGENET1K_V1, DEFAULT, IMAGENET1K_FEATURES) or a hub id (USER/NAME)")
    try:
        config = json.loads(config_path.read_text()) if config_path and config_path.exists() else {}
    except ValueError as e:
        raise UsageError(f"--pretrained {spec}: {config_path} is damaged ({e})") from None
    state = torchvision_keys(_read_any(weights, spec))
    kind = "vgg16" if "arch" in config else "timm" if "architecture" in config else ""
    source = " ".join(filter(None, [kind, f"hub {hub_id}" if hub_id else str(weights)]))
    return Weights(state, source, infer_arch(state), **_input_of(config), hub_id=hub_id, config=config)
