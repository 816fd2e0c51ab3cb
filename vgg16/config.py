"""Every option of a training run, in one typed dataclass checked when it is built.

The command line (`vgg16.cli`) fills it; tests build it directly. Nothing here knows about devices or
processes: values that depend on the launch (workers per process) are resolved where the launch is known.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .errors import UsageError
from .recipes import RECIPES, recipe_value

SIZE_OPTIONS = ("train_crop_size", "val_resize_size", "val_crop_size")


def default_val_resize(crop: int, small_images: bool) -> int:
    """torchvision's margin, Resize(256) before CenterCrop(224), scaled to `crop`; none below 64 px."""
    return crop if small_images else int(round(crop * 256 / 224))

ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
SCHEDULERS = ("step", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
DEVICES = ("cpu", "gpu", "npu")
OPT_LEVELS = ("O0", "O1", "O2", "O3")
# Named datasets that need no --data; anything else comes from --data.
NAMED_DATASETS = ("auto", "synthetic", "digits")

OPTIMIZERS = ("sgd", "sgd_nesterov", "adamw", "rmsprop")
WARMUP_METHODS = ("linear", "constant")
LR_UPDATES = ("step", "epoch")
# torchvision's --auto-augment values: its three policies by name, plus AutoAugment's three dataset policies.
AUTO_AUGMENTS = ("ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


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
    """Training crop size (--train-crop-size); default the recipe's (224), or 32 for images below 64 px."""
    hflip: Optional[float] = None
    """Probability of a horizontal flip in training (recipe: 0.5; 0 on the embedded digits)."""
    val_resize_size: Optional[int] = None
    """Resize before the validation centre crop; default val_crop_size x 256/224 (x 1 below 64 px)."""
    val_crop_size: Optional[int] = None
    """Validation centre crop; default the training crop (image_size)."""
    interpolation: str = "bilinear"
    auto_augment: Optional[str] = None
    """ra (RandAugment), ta_wide (TrivialAugmentWide), augmix, or an AutoAugment policy: imagenet, cifar10, svhn."""
    ra_magnitude: int = 9
    augmix_severity: int = 3
    random_erase: Optional[float] = None
    """Probability of erasing a random rectangle (filled with the mean colour, i.e. 0 after normalisation)."""
    mixup_alpha: Optional[float] = None
    cutmix_alpha: Optional[float] = None
    ra_sampler: Optional[bool] = None
    """Repeated augmentation: every image ra_reps times per epoch with different augmentation."""
    ra_reps: int = 3
    strict_data: bool = False
    """Stop at the first unreadable image instead of skipping and counting it."""
    workers: Optional[int] = None
    """DataLoader workers per process; default: the CPUs divided among the local processes, at most 8."""
    streaming: bool = False
    """Read parquet shards (a hub dataset or a local folder in the hub layout) as a stream: no download or Arrow
    copy first; every process reads an equal, distinct span of each epoch (vgg16/streaming.py)."""
    shuffle_buffer: int = 8192
    """--streaming: rows held for shuffling per process (its encoded images stay in memory)."""

    # --- model ---
    arch: Optional[str] = None
    """From the recipe: vgg16 (torchvision, ascend), vgg16_bn (modern, cifar10, digits)."""
    dropout: float = 0.5
    pretrained: Optional[str] = None
    """Starting weights (vgg16.weights): '' for torchvision's default ImageNet weights of --arch, a torchvision
    weights name, a .safetensors or .pth file, an exported or timm folder, or a hub model id (ours or timm's)."""
    freeze_features: bool = False
    """Train the classifier only; the features (and their BatchNorm statistics) stay as loaded."""
    freeze_epochs: Optional[int] = None
    """The classifier alone for this many epochs, then every layer (fastai's fine_tune)."""
    backbone_lr_scale: Optional[float] = None
    """The features train at lr x this (discriminative lr)."""

    # --- optimisation ---
    recipe: Optional[str] = None
    """Where unset options come from (vgg16.recipes): torchvision with --data, digits without."""
    opt: Optional[str] = None
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
    norm_weight_decay: Optional[float] = None
    """Weight decay of batch-norm weights and biases; None: --weight-decay."""
    bias_weight_decay: Optional[float] = None
    """Weight decay of every bias; None: --weight-decay (norm biases follow --norm-weight-decay when set)."""
    nesterov: bool = False
    """Same as --opt sgd_nesterov."""
    lr_scheduler: Optional[str] = None
    lr_step_size: Optional[int] = None
    lr_gamma: Optional[float] = None
    lr_update: Optional[str] = None
    """'step': the schedule moves every optimizer step; 'epoch': once per epoch, as torchvision and the old
    scripts step theirs."""
    warmup_epochs: Optional[float] = None
    """--lr-warmup-epochs."""
    lr_warmup_method: Optional[str] = None
    lr_warmup_decay: Optional[float] = None
    """The warm-up's starting factor of the lr."""
    lr_min: Optional[float] = None
    """The lr cosine decays to."""
    label_smoothing: Optional[float] = None
    clip_grad_norm: Optional[float] = None
    model_ema: Optional[bool] = None
    model_ema_steps: int = 32
    model_ema_decay: float = 0.99998
    """Per update at world size x batch x ema_steps / epochs = 1 (rescaled as torchvision does)."""
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
    dist_timeout: Optional[float] = None
    """Minutes before a collective that some process never joins fails (Accelerate's InitProcessGroupKwargs)."""
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
    hub_strategy: str = "end"
    """end, or every_save: upload the exported model after every save too, from a background thread."""

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
        need(self.lr is None or self.lr >= 0, f"--lr must be >= 0 (got {self.lr})")
        need(self.freeze_epochs is None or self.freeze_epochs >= 0, f"--freeze-epochs must be >= 0 (got {self.freeze_epochs})")
        need(self.backbone_lr_scale is None or self.backbone_lr_scale >= 0,
             f"--backbone-lr-scale must be >= 0 (got {self.backbone_lr_scale})")
        need(not (self.freeze_features and self.freeze_epochs), "--freeze-features freezes the features for the whole "
             "run, --freeze-epochs N for N epochs: keep one")
        need(0 <= self.momentum < 1, f"--momentum must be in [0, 1) (got {self.momentum})")
        need(self.weight_decay is None or self.weight_decay >= 0, f"--weight-decay must be >= 0 (got {self.weight_decay})")
        need(not self.nesterov or self.momentum > 0, "--nesterov needs a momentum above 0")
        need(self.lr_scheduler is None or self.lr_scheduler in SCHEDULERS, f"unknown --lr-scheduler {self.lr_scheduler!r}: use step or cosine")
        need(self.lr_step_size is None or self.lr_step_size >= 1, f"--lr-step-size must be at least 1 (got {self.lr_step_size})")
        need(self.lr_gamma is None or 0 < self.lr_gamma <= 1, f"--lr-gamma must be in (0, 1] (got {self.lr_gamma})")
        need(self.warmup_epochs is None or self.warmup_epochs >= 0,
             f"--warmup-epochs must be >= 0 (got {self.warmup_epochs})")
        need(self.label_smoothing is None or 0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1) (got {self.label_smoothing})")
        need(self.recipe is None or self.recipe in RECIPES,
             f"unknown --recipe {self.recipe!r}: choose one of {', '.join(RECIPES)}")
        need(self.opt is None or self.opt in OPTIMIZERS, f"unknown --opt {self.opt!r}: use {', '.join(OPTIMIZERS)}")
        need(not (self.nesterov and self.opt not in (None, "sgd", "sgd_nesterov")),
             f"--nesterov is for SGD; --opt {self.opt} has none")
        for name in ("norm_weight_decay", "bias_weight_decay", "lr_min", "clip_grad_norm", "mixup_alpha", "cutmix_alpha"):
            value = getattr(self, name)
            need(value is None or value >= 0, f"--{name.replace('_', '-')} must be >= 0 (got {value})")
        need(self.clip_grad_norm is None or self.clip_grad_norm > 0, "--clip-grad-norm must be positive")
        need(self.lr_update is None or self.lr_update in LR_UPDATES, f"--lr-update takes step or epoch (got {self.lr_update!r})")
        need(self.lr_warmup_method is None or self.lr_warmup_method in WARMUP_METHODS,
             f"unknown --lr-warmup-method {self.lr_warmup_method!r}: use linear or constant")
        need(self.lr_warmup_decay is None or 0 < self.lr_warmup_decay <= 1,
             f"--lr-warmup-decay must be in (0, 1] (got {self.lr_warmup_decay})")
        need(self.auto_augment is None or self.auto_augment in AUTO_AUGMENTS,
             f"unknown --auto-augment {self.auto_augment!r}: use {', '.join(AUTO_AUGMENTS)}")
        need(0 <= self.ra_magnitude <= 30, f"--ra-magnitude must be in [0, 30] (got {self.ra_magnitude})")
        need(1 <= self.augmix_severity <= 10, f"--augmix-severity must be in [1, 10] (got {self.augmix_severity})")
        need(self.random_erase is None or 0 <= self.random_erase <= 1, f"--random-erase must be in [0, 1] (got {self.random_erase})")
        need(self.interpolation in INTERPOLATIONS, f"unknown --interpolation {self.interpolation!r}: use {', '.join(INTERPOLATIONS)}")
        need(self.ra_reps >= 1, f"--ra-reps must be at least 1 (got {self.ra_reps})")
        need(self.model_ema_steps >= 1, f"--model-ema-steps must be at least 1 (got {self.model_ema_steps})")
        need(0 <= self.model_ema_decay < 1, f"--model-ema-decay must be in [0, 1) (got {self.model_ema_decay})")
        for name in ("val_resize_size", "val_crop_size"):
            value = getattr(self, name)
            need(value is None or value >= 32, f"--{name.replace('_', '-')} must be at least 32 (got {value})")
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
        need(not self.streaming or bool(self.data),
             "--streaming reads parquet files: give --data with a hub dataset name or a local parquet folder")
        need(not (self.streaming and self.gpu_decode), "--gpu-decode is not available with --streaming yet: drop one")
        need(not (self.streaming and self.ra_sampler), "--ra-sampler is not available with --streaming: drop one")
        need(self.shuffle_buffer >= 0, f"--shuffle-buffer must be >= 0 (got {self.shuffle_buffer})")
        need(self.dist_timeout is None or self.dist_timeout > 0, "--dist-timeout takes minutes above 0")
        need(self.hub_strategy in ("end", "every_save"), f"--hub-strategy {self.hub_strategy}: use end or every_save")
        need(self.hub_strategy == "end" or self.push_to_hub, "--hub-strategy every_save needs --push-to-hub")
        need(not self.push_to_hub or bool(self.hub_model_id),
             "--push-to-hub needs --hub-model-id USER/NAME (the repo to create or update)")
        need(not self.evaluate or bool(self.resume or self.pretrained),
             "--evaluate needs weights: add --resume CHECKPOINT_DIR or --pretrained WEIGHTS")

    @property
    def uses_embedded_data(self) -> bool:
        return self.dataset == "digits" or (self.dataset == "auto" and not self.data)

    def with_recipe_defaults(self) -> "TrainConfig":
        """A copy whose unset options take the recipe's values (vgg16.recipes). The sizes are not filled here:
        they depend on the images too (`resolve_sizes`)."""
        recipe = self.recipe or ("finetune" if self.pretrained is not None and not self.evaluate else
                                 "digits" if self.uses_embedded_data else "torchvision")
        # With --pretrained the weights decide the architecture (the runner reads it off them) unless -a says.
        arch = self.arch or (None if self.pretrained is not None else recipe_value(recipe, "arch"))
        filled = {k: recipe_value(recipe, k, arch) for k in RECIPES[recipe].values
                  if k not in SIZE_OPTIONS and getattr(self, k) is None}
        filled["arch"] = arch
        if self.freeze_features and self.freeze_epochs is None:
            filled["freeze_epochs"] = 0  # frozen all run: the recipe's unfreezing does not apply
        if self.nesterov and (self.opt or filled.get("opt")) == "sgd":
            filled["opt"] = "sgd_nesterov"
        return dataclasses.replace(self, recipe=recipe, **filled)

    def resolve_sizes(self, small_images: bool, weights_sizes: Optional[tuple] = None) -> tuple[int, int, int]:
        """(training crop, validation resize, validation crop).

        For ImageNet-sized images when you give none of the three: the starting weights' own sizes (their
        transforms' meta), else the recipe's (modern: 176 / 232 / 224). Otherwise unset ones follow from the
        training crop: validation crop = training crop, resize = crop x 256/224 (torchvision's ratio), or no margin
        at all below 64 px (CIFAR, digits)."""
        given = (self.image_size, self.val_resize_size, self.val_crop_size)
        if not small_images and given == (None, None, None) and weights_sizes:
            return tuple(weights_sizes)  # type: ignore[return-value]
        if not small_images and given == (None, None, None) and self.recipe:
            sizes = tuple(recipe_value(self.recipe, k) for k in SIZE_OPTIONS)
            if None not in sizes:
                return sizes  # type: ignore[return-value]
        train = self.image_size or (32 if small_images else 224)
        crop = self.val_crop_size or train
        resize = self.val_resize_size or default_val_resize(crop, small_images)
        return train, resize, crop

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.pop("notes")
        return out
