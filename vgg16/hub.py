"""Sharing and using exported models: push an output folder to the hub, load one back for inference."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from . import checkpoint as ckpt
from .data import IMAGENET_MEAN, IMAGENET_STD
from .errors import UsageError
from .model import build_model, check_state_dict, head_of, num_classes_of

# What goes to the hub: the model folder, not the training state (checkpoints/ holds optimizer state and RNG).
UPLOADED = ["model.safetensors", "config.json", "README.md", "results.json", "results.md", "curves.png"]


class PushFailed(RuntimeError):
    """The upload failed; the local folder is complete."""


def push_to_hub(output_dir: Path, repo_id: str, private: bool = False) -> str:
    """Create (or reuse) the model repo and upload the model folder; return the commit URL.

    The token comes from HF_TOKEN or `huggingface-cli login`, through huggingface_hub; it is never read here.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(output_dir),
                                 allow_patterns=UPLOADED, commit_message="Upload VGG trained with vgg16/train_vgg16.py")
    except Exception as e:  # network, auth, quota: all end the same way for the user
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise PushFailed(f"push to {repo_id} failed ({type(e).__name__}: {first}); {output_dir} is complete: "
                         f"upload it later with `huggingface-cli upload {repo_id} {output_dir}`") from None
    return str(getattr(info, "commit_url", info))


def infer_arch(state_dict: dict) -> str:
    """The VGG variant of a torchvision state_dict: conv count (8/10/13/16) and batch norm."""
    convs = sum(1 for k, v in state_dict.items() if k.startswith("features.") and k.endswith(".weight") and v.dim() == 4)
    depth = {8: "vgg11", 10: "vgg13", 13: "vgg16", 16: "vgg19"}.get(convs)
    if depth is None:
        raise UsageError(f"these weights have {convs} conv layers: not a VGG11/13/16/19")
    return depth + ("_bn" if any(k.endswith("running_mean") for k in state_dict) else "")


def from_pretrained(path_or_id: str) -> tuple[nn.Module, dict]:
    """(model in eval mode, config) from one of our folders, a safetensors file of a torchvision state_dict, or a
    hub model id. Without config.json the arch, class count and head are read off the weights."""
    state, config = ckpt.resolve_pretrained(path_or_id)
    config = dict(config or {})
    config.setdefault("arch", infer_arch(state))
    config.setdefault("num_classes", num_classes_of(state))
    config.setdefault("head", head_of(state))
    config.setdefault("image_size", 32 if config["head"] == "small" else 224)
    config.setdefault("class_names", [str(i) for i in range(config["num_classes"])])
    config.setdefault("mean", IMAGENET_MEAN)
    config.setdefault("std", IMAGENET_STD)
    model = build_model(config["arch"], config["num_classes"], head=config["head"])
    check_state_dict(model, state, str(path_or_id))
    model.load_state_dict(state)
    return model.eval(), config

