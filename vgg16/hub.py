"""Sharing and using exported models: push an output folder to the hub, load one back for inference."""

from __future__ import annotations

import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from huggingface_hub import PyTorchModelHubMixin
from safetensors.torch import save_model
from torch import nn
from torchvision import models

from . import checkpoint as ckpt
from .model import build_model, check_state_dict, head_of, num_classes_of, with_timm_fields
from .weights import resolve_weights

# What goes to the hub: the model folder, not the training state (checkpoints/ holds optimizer state and RNG).
UPLOADED = ["model.safetensors", "config.json", "README.md", "results.json", "results.md", "curves.png"]


class PushFailed(RuntimeError):
    """The upload failed; the local folder is complete. `cause`: the error's one line, token removed."""

    def __init__(self, cause: str, message: str):
        super().__init__(message)
        self.cause = cause


TOKEN = re.compile(r"hf_[A-Za-z0-9]{20,}")  # the shape of a user access token


def _redact(text: str) -> str:
    """Whatever an error message carries, a token never reaches a log line: the token huggingface_hub would use
    (HF_TOKEN or the login) and anything shaped like one."""
    from huggingface_hub import get_token

    token = get_token()
    if token:
        text = text.replace(token, "hf_***")
    return TOKEN.sub("hf_***", text)


def push_to_hub(output_dir: Path, repo_id: str, private: bool = False, message: str = "") -> str:
    """Create (or reuse) the model repo and upload the model folder; return the commit URL.

    The token comes from HF_TOKEN or `huggingface-cli login`, through huggingface_hub; we read it only to remove it
    from error messages.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(output_dir),
                                 allow_patterns=UPLOADED,
                                 commit_message=message or "Upload VGG trained with vgg16/train_vgg16.py")
    except Exception as e:  # network, auth, quota: all end the same way for the user
        first = _redact(str(e).strip().splitlines()[0]) if str(e).strip() else ""
        raise PushFailed(f"{type(e).__name__}: {first}",
                         f"push to {repo_id} failed ({type(e).__name__}: {first}); {output_dir} is complete: "
                         f"upload it later with `huggingface-cli upload {repo_id} {output_dir}`") from None
    return str(getattr(info, "commit_url", info))


class BackgroundPusher:
    """--hub-strategy every_save: after each save the model folder's files are copied to a staging folder (all the
    training waits for) and uploaded from one background thread, in order. A failed upload is one line in the log;
    training goes on, and the final push at the end of the run uploads the finished folder again."""

    def __init__(self, repo_id: str, private: bool, log):
        self.repo_id, self.private, self.log = repo_id, private, log
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-push")
        self.pending: list = []
        self.failed = 0

    def submit(self, output_dir: Path, label: str) -> None:
        staging = Path(tempfile.mkdtemp(prefix="vgg16-push-"))
        for name in UPLOADED:
            if (Path(output_dir) / name).exists():
                shutil.copy2(Path(output_dir) / name, staging / name)
        self.pending.append(self.executor.submit(self._upload, staging, label))

    def _upload(self, staging: Path, label: str) -> None:
        try:
            url = push_to_hub(staging, self.repo_id, self.private, message=f"{label}: vgg16/train_vgg16.py")
            self.log(f"pushed {label} to {self.repo_id}: {url}")
        except PushFailed as e:
            self.failed += 1
            self.log(f"warning: push of {label} to {self.repo_id} failed ({e.cause}); training goes on, and the "
                     "final push uploads the finished folder")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def close(self) -> None:
        """Wait for the uploads still running (before the final push, so the hub's last commit is the final one)."""
        for future in self.pending:
            future.result()
        self.executor.shutdown()


class VGGClassifier(models.VGG, PyTorchModelHubMixin, library_name="timm", pipeline_tag="image-classification",
                    license="bsd-3-clause", tags=["vgg", "torchvision", "image-classification"]):
    """torchvision's VGG (the same modules, so the same state_dict keys) with the hub's save/load/push.

    Built on `huggingface_hub.PyTorchModelHubMixin` for `save_pretrained` and `push_to_hub`; `from_pretrained` is
    ours, because it also reads a bare torchvision-keyed .safetensors file and folders exported before config.json
    held timm's fields. `model.config` is config.json: the constructor's arguments plus what training recorded
    (class names, mean/std, evaluation sizes) and, for 224 px models, timm's fields.
    """

    def __init__(self, arch: str = "vgg16", num_classes: int = 1000, head: str = "imagenet", dropout: float = 0.5,
                 **config):
        nn.Module.__init__(self)  # torchvision's VGG.__init__ takes a built `features`; build_model makes them all
        base = build_model(arch, num_classes, head=head, dropout=dropout)
        self.features, self.avgpool, self.classifier = base.features, base.avgpool, base.classifier
        self.config = {"arch": arch, "num_classes": num_classes, "head": head, "dropout": dropout, **config}

    def _save_pretrained(self, save_directory: Path) -> None:
        """model.safetensors with torchvision's keys, and config.json with timm's fields where timm can build it."""
        save_model(self, str(Path(save_directory) / ckpt.WEIGHTS))
        ckpt.write_json(Path(save_directory) / ckpt.MODEL_CONFIG, with_timm_fields(self.config))

    @classmethod
    def from_pretrained(cls, path_or_id: str) -> "VGGClassifier":  # noqa: D102 - see from_pretrained below
        return from_pretrained(path_or_id)


def from_pretrained(path_or_id: str, arch: str = "vgg16") -> VGGClassifier:
    """The model, in eval mode, with its config as `model.config`, from whatever `--pretrained` takes
    (vgg16.weights): one of our folders (any version), a safetensors or torchvision .pth file, a timm folder or
    hub id, a torchvision weights name (of `arch`), or one of our hub ids. Without our config.json the arch,
    class count, head and input are read off the weights and their meta."""
    weights = resolve_weights(str(path_or_id), arch)
    state = weights.state
    config = dict(weights.config) if "arch" in weights.config else {}
    config.setdefault("arch", weights.arch)
    config.setdefault("num_classes", num_classes_of(state))
    config.setdefault("head", head_of(state))
    config.setdefault("image_size", weights.crop or (32 if config["head"] == "small" else 224))
    config.setdefault("class_names", list(weights.class_names or [str(i) for i in range(config["num_classes"])]))
    config.setdefault("mean", list(weights.mean))
    config.setdefault("std", list(weights.std))
    if weights.resize:
        config.setdefault("val_resize_size", weights.resize)
    config.setdefault("interpolation", weights.interpolation or "bilinear")
    model = VGGClassifier(**config)
    check_state_dict(model, state, str(path_or_id))
    model.load_state_dict(state)
    return model.eval()
