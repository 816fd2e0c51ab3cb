"""Every option of a training run, in one typed dataclass checked when it is built.

The command line (`vgg16.cli`) fills it; tests build it directly. Nothing here knows about devices or
processes: values that depend on the launch (workers per process) are resolved where the launch is known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .errors import UsageError

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
SCHEDULERS = ("step", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
DEVICES = ("cpu", "gpu", "npu")
OPT_LEVELS = ("O0", "O1", "O2", "O3")
# Named datasets that need no --data; anything else comes from --data.
NAMED_DATASETS = ("auto", "synthetic", "digits")

# Values an unset option takes. "imagenet" is torchvision's VGG recipe (per-process batch 32 on 8 devices = 256).
# "digits" is for the embedded 1,437-image set, tuned to reach high accuracy in about two minutes on a 2-core CPU: plain
# VGG16 at lr 0.01 stayed at chance there (8.9% after 5 epochs), VGG16-BN at lr 0.01 reached 44%.
RECIPES = {
    "imagenet": dict(arch="vgg16", epochs=90, batch_size=32, lr=0.01, weight_decay=1e-4, lr_scheduler="step",
                     warmup_epochs=0.0, hflip=0.5),
    "digits": dict(arch="vgg16_bn", epochs=8, batch_size=64, lr=0.05, weight_decay=5e-4, lr_scheduler="cosine",
                   warmup_epochs=1.0, hflip=0.0),
}


@dataclass
class TrainConfig:
    # --- data ---
    data: Optional[str] = None
    """ImageNet-style folder, CIFAR-10 folder, parquet folder, save_to_disk folder, or a hub dataset name."""
    dataset: str = "auto"
    """'auto' (from --data, or the embedded digits without it), 'synthetic', or 'digits'."""
    num_classes: Optional[int] = None
    """Class count for --dataset synthetic (default 1000); for real data it comes from the data."""
    image_size: Optional[int] = None
    """Training crop size; default 224, or 32 for data whose images are below 64 px (CIFAR, digits)."""
    hflip: Optional[float] = None
    """Probability of a horizontal flip in training; default 0.5, 0 on the embedded digits (mirrored digits are
    not digits)."""
    strict_data: bool = False
    """Stop at the first unreadable image instead of skipping and counting it."""
    workers: Optional[int] = None
    """DataLoader workers per process; default: the CPUs divided among the local processes, at most 8."""

    # --- model ---
    arch: Optional[str] = None
    """Default vgg16; vgg16_bn on the embedded digits (plain VGG16 stays at chance there in 5 epochs)."""
    dropout: float = 0.5
    pretrained: Optional[str] = None
    """safetensors file, exported folder, or hub model id with torchvision-format weights."""

    # --- optimisation ---
    epochs: Optional[int] = None
    start_epoch: Optional[int] = None
    batch_size: Optional[int] = None
    """Per process. The global batch is batch_size x processes x grad_accum."""
    grad_accum: int = 1
    lr: Optional[float] = None
    lr_scale_by_batch: bool = False
    """Linear scaling rule: use lr x global_batch / 256."""
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    nesterov: bool = False
    lr_scheduler: Optional[str] = None
    lr_step_size: int = 30
    lr_gamma: float = 0.1
    warmup_epochs: Optional[float] = None
    """Linear warm-up from lr/100."""
    label_smoothing: float = 0.0
    seed: int = 49

    # --- precision and device ---
    mixed_precision: Optional[str] = None
    """'no', 'fp16' or 'bf16'; None keeps what the accelerate launch config says."""
    loss_scale: Optional[float] = None
    """Initial fp16 loss scale that never grows (the seed's static --loss-scale); None: dynamic."""
    device: Optional[str] = None
    """Expected device ('cpu', 'gpu', 'npu'); the run stops if the launch put it elsewhere."""
    deterministic: bool = False
    channels_last: bool = False
    """NHWC memory format for the model and its inputs (faster convolutions on recent GPUs; opt-in, unverified on NPU)."""
    compile: bool = False
    """torch.compile through Accelerate's dynamo settings; GPU only."""
    gpu_decode: bool = False
    """Decode JPEG batches on the GPU (nvJPEG); loader workers only read files."""

    # --- run control and outputs ---
    output_dir: str = "./output"
    print_freq: int = 10
    evaluate: bool = False
    resume: Optional[str] = None
    """A checkpoint folder, or 'auto' for the newest complete one in output_dir (fresh start if none)."""
    keep_checkpoints: int = 2
    checkpoint_every: Optional[int] = None
    """Also save every N optimizer steps (mid-epoch), besides each epoch's end."""
    stop_step_num: Optional[int] = None
    prof: bool = False
    debug: bool = False
    report_to: str = "none"
    """Accelerate trackers, comma-separated (tensorboard, wandb, mlflow, ...), or none."""
    push_to_hub: bool = False
    hub_model_id: Optional[str] = None
    hub_private: bool = False

    notes: list = field(default_factory=list)
    """Messages from the command-line layer (e.g. how a legacy flag was mapped), printed at start."""

    def __post_init__(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UsageError(msg)

        need(self.arch is None or self.arch in ARCHS, f"unknown arch {self.arch!r}: choose one of {', '.join(ARCHS)}")
        need(self.dataset in NAMED_DATASETS,
             f"unknown --dataset {self.dataset!r}: use {', '.join(NAMED_DATASETS)}, or give a path or hub name with --data")
        need(not (self.data and self.dataset in ("synthetic", "digits")),
             f"--data and --dataset {self.dataset} exclude each other: drop one")
        need(self.batch_size is None or self.batch_size >= 1, f"--batch-size must be at least 1 (got {self.batch_size})")
        need(self.grad_accum >= 1, f"--grad-accum must be at least 1 (got {self.grad_accum})")
        need(self.epochs is None or self.epochs >= 1, f"--epochs must be at least 1 (got {self.epochs})")
        need(self.start_epoch is None or self.start_epoch >= 0, f"--start-epoch must be >= 0 (got {self.start_epoch})")
        need(self.lr is None or self.lr > 0, f"--lr must be positive (got {self.lr})")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        need(self.weight_decay is None or self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        need(not self.nesterov or self.momentum > 0, "--nesterov needs a momentum above 0")
        need(self.lr_scheduler is None or self.lr_scheduler in SCHEDULERS, f"unknown --lr-scheduler {self.lr_scheduler!r}: use step or cosine")
        need(self.lr_step_size >= 1, f"--lr-step-size must be at least 1 (got {self.lr_step_size})")
        need(0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1] (got {self.lr_gamma})")
        need(self.warmup_epochs is None or self.warmup_epochs >= 0,
             f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})")
        need(0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        need(0 <= self.dropout < 1, f"--dropout must be in [0, 1) (got {self.dropout})")
        need(self.image_size is None or self.image_size >= 32,
             f"--image-size must be at least 32: VGG halves the image five times (got {self.image_size})")
        need(self.num_classes is None or self.num_classes >= 2, f"--num-classes must be at least 2 (got {self.num_classes})")
        need(self.workers is None or self.workers >= 0, f"--workers must be >= 0 (got {self.workers})")
        need(self.print_freq >= 1, f"--print-freq must be at least 1 (got {self.print_freq})")
        need(self.stop_step_num is None or self.stop_step_num >= 1,
             f"--stop-step-num must be at least 1 (got {self.stop_step_num})")
        need(self.keep_checkpoints >= 1, f"--keep-checkpoints must be at least 1 (got {self.keep_checkpoints})")
        need(self.checkpoint_every is None or self.checkpoint_every >= 1,
             f"--checkpoint-every must be at least 1 (got {self.checkpoint_every})")
        need(self.mixed_precision is None or self.mixed_precision in PRECISIONS,
             f"unknown --mixed-precision {self.mixed_precision!r}: use no, fp16 or bf16")
        need(self.loss_scale is None or self.loss_scale > 0, f"--loss-scale must be positive (got {self.loss_scale})")
        need(self.loss_scale is None or self.mixed_precision in (None, "fp16"),
             "--loss-scale only applies to fp16: add --mixed-precision fp16 (or --amp)")
        need(self.device is None or self.device in DEVICES, f"unknown --device {self.device!r}: use cpu, gpu or npu")
        need(not (self.gpu_decode and self.dataset == "synthetic"), "--gpu-decode has nothing to decode with --dataset synthetic")
        need(not self.push_to_hub or bool(self.hub_model_id),
             "--push-to-hub needs --hub-model-id USER/NAME (the repo to create or update)")
        need(not self.evaluate or bool(self.resume or self.pretrained),
             "--evaluate needs weights: add --resume CHECKPOINT_DIR or --pretrained WEIGHTS")

    @property
    def uses_embedded_data(self) -> bool:
        return self.dataset == "digits" or (self.dataset == "auto" and not self.data)

    def with_recipe_defaults(self) -> "TrainConfig":
        """A copy whose unset recipe options take the recipe's values (see RECIPES)."""
        recipe = RECIPES["digits" if self.uses_embedded_data else "imagenet"]
        return dataclasses.replace(self, **{k: v for k, v in recipe.items() if getattr(self, k) is None})

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("notes")
        return out
