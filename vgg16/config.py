"""Every option of a training run, declared once: a typed dataclass field whose `option(...)` gives its flags, help,
group and allowed values (vgg16/options.py builds the command line, the checks and docs/options.md from them).

A config is complete when built: values not given come from the recipe (vgg16/recipes.py), then the rules that
join several options are checked (`_check_combinations`). The command line (`vgg16.cli`) fills it; tests build it
directly. Nothing here knows about devices or processes: values that depend on the launch (workers per process)
are resolved where the launch is known.

Over 300 lines on purpose: it is the one place every option is declared (76 of them, one to six lines each);
splitting the declarations by group would put the options a reader looks for in several files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from .errors import UsageError
from .options import check_declared, option
from .recipes import RECIPES, recipe_value

# The three sizes also depend on the images and the starting weights: `resolve_sizes`, not the recipe fill.
SIZE_OPTIONS = ("image_size", "val_resize_size", "val_crop_size")


def default_val_resize(crop: int, small_images: bool) -> int:
    """torchvision's margin, Resize(256) before CenterCrop(224), scaled to `crop`; none below 64 px."""
    return crop if small_images else int(round(crop * 256 / 224))


ARCHS = ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn")
SCHEDULERS = ("step", "cosine")
PRECISIONS = ("no", "fp16", "bf16")
DEVICES = ("cpu", "gpu", "npu")
COMPILE_MODES = ("default", "max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead")
# Named datasets that need no --data; anything else comes from --data.
NAMED_DATASETS = ("auto", "synthetic", "digits")
OPTIMIZERS = ("sgd", "sgd_nesterov", "adamw", "rmsprop")
WARMUP_METHODS = ("linear", "constant")
LR_UPDATES = ("step", "epoch")
# torchvision's --auto-augment values: its three policies by name, plus AutoAugment's three dataset policies.
AUTO_AUGMENTS = ("ra", "ta_wide", "augmix", "imagenet", "cifar10", "svhn")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
HUB_STRATEGIES = ("end", "every_save")
# torchvision's reference spells its schedulers by class name; both spellings work.
SCHEDULER_NAMES = {"steplr": "step", "cosineannealinglr": "cosine"}


def scheduler_name(text: str) -> str:
    return SCHEDULER_NAMES.get(text.lower(), text.lower())


def loss_scale_value(text: str) -> Optional[float]:
    """The old scripts' --loss-scale: a number (a static scale) or 'dynamic' (None)."""
    if text.lower() == "dynamic":
        return None
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"--loss-scale takes a number or 'dynamic' (got {text!r})") from None


DATA, MODEL, OPTIM, DEVICE, RUN = "data", "model", "optimisation", "precision and device", "run"


@dataclass
class TrainConfig:
    # --- data ---
    data: Optional[str] = option(
        None, "--data", "--data_path", "--data-path", group=DATA, metavar="PATH_OR_NAME",
        help="ImageNet-style folder (train/, val/) or a folder of class folders, cifar-10-batches-py, a parquet folder, "
        "a save_to_disk folder, or a hub dataset name (default: the embedded digits)")
    dataset: str = option(
        "auto", "--dataset", group=DATA, choices=NAMED_DATASETS, hint="or give a path or hub name with --data",
        help="auto (from --data, or the embedded digits without it), synthetic (random tensors, for throughput) or "
        "digits")
    num_classes: Optional[int] = option(None, "--num-classes", group=DATA, minimum=2,
                                        help="class count for --dataset synthetic (default 1000); real data has its own")
    image_size: Optional[int] = option(
        None, "--image-size", "--train-crop-size", group=DATA, minimum=32, why="VGG halves the image five times",
        help="training crop (default: the starting weights' own, else the recipe's: 224, 176 in modern; 32 for "
        "images below 64 px)")
    val_resize_size: Optional[int] = option(None, "--val-resize-size", group=DATA, minimum=32,
                                            help="resize before the validation crop (default crop x 256/224, x 1 below 64 px)")
    val_crop_size: Optional[int] = option(None, "--val-crop-size", group=DATA, minimum=32,
                                          help="validation centre crop (default: the training crop)")
    interpolation: str = option("bilinear", "--interpolation", group=DATA, choices=INTERPOLATIONS,
                                help="resize interpolation")
    hflip: Optional[float] = option(None, "--hflip", group=DATA, minimum=0, maximum=1,
                                    help="horizontal flip probability in training")
    auto_augment: Optional[str] = option(
        None, "--auto-augment", group=DATA, choices=AUTO_AUGMENTS, metavar="POLICY",
        help=f"{' | '.join(AUTO_AUGMENTS)}: RandAugment, TrivialAugmentWide, AugMix or an AutoAugment policy")
    ra_magnitude: int = option(9, "--ra-magnitude", group=DATA, minimum=0, maximum=30, help="RandAugment magnitude")
    augmix_severity: int = option(3, "--augmix-severity", group=DATA, minimum=1, maximum=10, help="AugMix severity")
    random_erase: Optional[float] = option(
        None, "--random-erase", group=DATA, minimum=0, maximum=1, metavar="P",
        help="probability of erasing a random rectangle (filled with the mean colour: 0 after normalisation)")
    mixup_alpha: Optional[float] = option(None, "--mixup-alpha", group=DATA, minimum=0,
                                          help="mixup Beta(alpha, alpha), batch-level")
    cutmix_alpha: Optional[float] = option(None, "--cutmix-alpha", group=DATA, minimum=0,
                                           help="cutmix Beta(alpha, alpha), batch-level")
    ra_sampler: Optional[bool] = option(None, "--ra-sampler", group=DATA,
                                        help="repeated augmentation: each image --ra-reps times per epoch")
    ra_reps: int = option(3, "--ra-reps", group=DATA, minimum=1, help="repetitions for --ra-sampler")
    strict_data: bool = option(False, "--strict-data", group=DATA,
                               help="stop at the first unreadable image (off: skip it, warn once, count it in "
                               "results.json)")
    streaming: bool = option(
        False, "--streaming", group=DATA,
        help="read parquet shards (a hub name or a local folder in the hub layout) as a stream: no download or "
        "conversion first; every process reads an equal, distinct part of each epoch")
    shuffle_buffer: int = option(8192, "--shuffle-buffer", group=DATA, minimum=0, metavar="ROWS",
                                 help="--streaming: rows per process held for shuffling, in memory")
    workers: Optional[int] = option(None, "-j", "--workers", group=DATA, minimum=0,
                                    help="data loading workers per process (default: this process's CPUs / local processes)")

    # --- model ---
    arch: Optional[str] = option(
        None, "-a", "--arch", "--a", group=MODEL, choices=ARCHS, metavar="ARCH",
        help=f"one of {', '.join(ARCHS)}; with --pretrained the weights decide unless you say")
    dropout: float = option(0.5, "--dropout", group=MODEL, minimum=0, maximum=1, below=True,
                            help="dropout in the classifier")
    pretrained: Optional[str] = option(
        None, "--pretrained", group=MODEL, nargs="?", const="", metavar="WEIGHTS",
        help="start from these weights (alone: torchvision's ImageNet weights of --arch): a torchvision weights name "
        "(IMAGENET1K_V1, DEFAULT, IMAGENET1K_FEATURES), a .safetensors or .pth file, an exported or timm folder, or a "
        "hub id (USER/NAME, timm/vgg16.tv_in1k); the arch, input mean/std and sizes follow the weights; default "
        "recipe finetune")
    freeze_features: bool = option(False, "--freeze-features", group=MODEL,
                                   help="train the classifier only: the features and their BatchNorm statistics stay "
                                   "as loaded")
    freeze_epochs: Optional[int] = option(None, "--freeze-epochs", group=MODEL, minimum=0, metavar="N",
                                          help="the classifier alone for N epochs, then every layer (fastai's fine_tune)")
    backbone_lr_scale: Optional[float] = option(None, "--backbone-lr-scale", group=MODEL, minimum=0, metavar="F",
                                                help="the features train at lr x F (discriminative lr)")

    # --- optimisation ---
    recipe: Optional[str] = option(
        None, "--recipe", group=OPTIM, choices=tuple(RECIPES),
        help="fills every option you do not give (docs/recipes.md); default finetune with --pretrained, torchvision "
        "with --data, digits without")
    opt: Optional[str] = option(None, "--opt", group=OPTIM, choices=OPTIMIZERS, help="optimizer")
    epochs: Optional[int] = option(None, "--epochs", "--epoch", group=OPTIM, minimum=1, help="epochs to train")
    start_epoch: Optional[int] = option(None, "--start-epoch", group=OPTIM, minimum=0,
                                        help="epoch to start from (overrides the one stored by --resume)")
    batch_size: Optional[int] = option(
        None, "-b", "--batch-size", group=OPTIM, minimum=1,
        help="per process: the global batch is batch size x processes x --grad-accum")
    grad_accum: int = option(1, "--grad-accum", group=OPTIM, minimum=1, help="micro-batches per optimizer step")
    val_batch_size: Optional[int] = option(
        None, "--val-batch-size", group=OPTIM, minimum=1,
        help="validation batch per process (default: --batch-size); evaluation keeps no activations for a backward "
        "pass, so a larger one fits and finishes sooner")
    lr: Optional[float] = option(None, "--lr", "--learning-rate", group=OPTIM, minimum=0, help="learning rate")
    lr_scale_by_batch: bool = option(False, "--lr-scale-by-batch", group=OPTIM,
                                     help="linear scaling rule: the lr used is --lr x global batch / 256 (printed at "
                                     "start)")
    momentum: float = option(0.9, "--momentum", "--mom", group=OPTIM, minimum=0, maximum=1, below=True,
                             help="SGD momentum")
    weight_decay: Optional[float] = option(None, "--weight-decay", "--wd", group=OPTIM, minimum=0, help="weight decay")
    norm_weight_decay: Optional[float] = option(
        None, "--norm-weight-decay", group=OPTIM, minimum=0,
        help="weight decay of normalisation layers' weights and biases (- in a recipe: --weight-decay)")
    bias_weight_decay: Optional[float] = option(
        None, "--bias-weight-decay", group=OPTIM, minimum=0,
        help="weight decay of every bias (- in a recipe: --weight-decay; norm biases follow --norm-weight-decay "
        "when set)")
    nesterov: bool = option(False, "--nesterov", group=OPTIM, help="same as --opt sgd_nesterov")
    lr_scheduler: Optional[str] = option(
        None, "--lr-scheduler", group=OPTIM, choices=SCHEDULERS, parse=scheduler_name, metavar="step|cosine",
        help="the lr schedule (torchvision's names StepLR and CosineAnnealingLR work too)")
    lr_step_size: Optional[int] = option(None, "--lr-step-size", group=OPTIM, minimum=1,
                                         help="epochs between lr decays for step")
    lr_gamma: Optional[float] = option(None, "--lr-gamma", group=OPTIM, minimum=0, maximum=1, above=True,
                                       help="the factor of each step decay")
    lr_update: Optional[str] = option(
        None, "--lr-update", group=OPTIM, choices=LR_UPDATES,
        help="step: the schedule moves every optimizer step; epoch: once per epoch, as torchvision and the old "
        "scripts step theirs")
    warmup_epochs: Optional[float] = option(None, "--warmup-epochs", "--lr-warmup-epochs", group=OPTIM, minimum=0,
                                            help="epochs of lr warm-up")
    lr_warmup_method: Optional[str] = option(None, "--lr-warmup-method", group=OPTIM, choices=WARMUP_METHODS,
                                             help="how the warm-up rises")
    lr_warmup_decay: Optional[float] = option(None, "--lr-warmup-decay", group=OPTIM, minimum=0, maximum=1, above=True,
                                              help="the warm-up's starting factor of the lr")
    lr_min: Optional[float] = option(None, "--lr-min", group=OPTIM, minimum=0, help="the lr cosine ends at")
    label_smoothing: Optional[float] = option(None, "--label-smoothing", group=OPTIM, minimum=0, maximum=1, below=True,
                                              help="label smoothing of the loss")
    clip_grad_norm: Optional[float] = option(None, "--clip-grad-norm", group=OPTIM, minimum=0, above=True,
                                             metavar="MAX_NORM", help="clip the gradients' global norm (default off)")
    model_ema: Optional[bool] = option(None, "--model-ema", group=OPTIM,
                                       help="keep and evaluate an exponential moving average of the weights")
    model_ema_steps: int = option(32, "--model-ema-steps", group=OPTIM, minimum=1,
                                  help="optimizer steps between EMA updates")
    model_ema_decay: float = option(
        0.99998, "--model-ema-decay", group=OPTIM, minimum=0, maximum=1, below=True,
        help="EMA decay per update at world size x batch x --model-ema-steps / epochs = 1, rescaled as torchvision "
        "does")
    seed: int = option(49, "--seed", group=OPTIM, help="seeds the model, the data order and the augmentation")

    # --- precision and device ---
    mixed_precision: Optional[str] = option(None, "--mixed-precision", group=DEVICE, choices=PRECISIONS,
                                            help="default: what the accelerate config says")
    loss_scale: Optional[float] = option(
        None, "--loss-scale", group=DEVICE, minimum=0, above=True, parse=loss_scale_value, metavar="N|dynamic",
        help="fp16 loss scale: a number (a static scale that never grows, the old scripts' --loss-scale) or dynamic "
        "(default)")
    device: Optional[str] = option(None, "--device", group=DEVICE, choices=DEVICES,
                                   help="stop unless the launch really runs on this device (default: no check)")
    deterministic: bool = option(False, "--deterministic", group=DEVICE, help="deterministic kernels (slower)")
    channels_last: bool = option(False, "--channels-last", group=DEVICE,
                                 help="NHWC memory format for the model and its inputs (faster convolutions on recent "
                                 "GPUs; not checked on NPU)")
    compile: bool = option(False, "--compile", group=DEVICE,
                           help="torch.compile the model, its input's conversion and normalisation included (one graph "
                           "for training, no graph break; under DDP too). Not on NPU; on CPU it costs more than it saves")
    compile_mode: str = option("default", "--compile-mode", group=DEVICE, choices=COMPILE_MODES,
                               help="inductor's mode with --compile: max-autotune tries more convolution and matmul "
                               "kernels (minutes more compiling) and uses CUDA graphs; -no-cudagraphs without them")
    compile_backend: str = option("inductor", "--compile-backend", group=DEVICE, metavar="BACKEND",
                                  help="torch.compile backend with --compile: aot_eager or eager trace the same graph "
                                  "without generating kernels (to tell a compiler problem from a tracing one)")
    dist_timeout: Optional[float] = option(
        None, "--dist-timeout", group=DEVICE, minimum=0, above=True, metavar="MINUTES",
        help="minutes before a collective that some process never joins fails (default torch's: 10 NCCL, 30 gloo); "
        "raise it for slow starts of large jobs")
    gpu_decode: bool = option(False, "--gpu-decode", group=DEVICE,
                              help="decode JPEG batches on the GPU (nvJPEG); workers only read files. NVIDIA only")

    # --- run control and outputs ---
    output_dir: str = option("./output", "--output-dir", group=RUN, help="where the run writes everything")
    print_freq: int = option(10, "-p", "--print-freq", group=RUN, minimum=1, help="log every N optimizer steps")
    evaluate: bool = option(False, "-e", "--evaluate", group=RUN, help="only evaluate --resume or --pretrained weights")
    resume: Optional[str] = option(
        None, "--resume", group=RUN, metavar="CHECKPOINT_DIR|auto",
        help="a checkpoints/... folder written by a run, or auto: the newest in --output-dir (a fresh start if none)")
    keep_checkpoints: int = option(2, "--keep-checkpoints", group=RUN, minimum=1, help="newest checkpoints to keep")
    checkpoint_every: Optional[int] = option(None, "--checkpoint-every", group=RUN, minimum=1, metavar="N",
                                             help="also save every N optimizer steps, mid-epoch (default: at epoch ends)")
    stop_step_num: Optional[int] = option(None, "--stop-step-num", group=RUN, minimum=1,
                                          help="stop training after N optimizer steps (default: all epochs)")
    prof: bool = option(False, "--prof", group=RUN, help="write a profiler trace of a few steps to OUTPUT/profile")
    debug: bool = option(False, "--debug", group=RUN, help="show full tracebacks")
    report_to: str = option("none", "--report-to", group=RUN,
                            help="Accelerate trackers, comma-separated: tensorboard (logs in OUTPUT/logs), wandb, "
                            "mlflow, comet_ml, aim, clearml, ...")
    push_to_hub: bool = option(False, "--push-to-hub", group=RUN, help="upload the model folder to the hub at the end")
    hub_model_id: Optional[str] = option(None, "--hub-model-id", group=RUN, metavar="USER/NAME",
                                         help="the hub repo for --push-to-hub")
    hub_private: bool = option(False, "--hub-private", group=RUN, help="create the hub repo as private")
    hub_strategy: str = option(
        "end", "--hub-strategy", group=RUN, choices=HUB_STRATEGIES,
        help="end: upload once, at the end; every_save: also after every epoch's save, from a background thread (as "
        "transformers' Trainer)")

    notes: list = field(default_factory=list)
    """Not an option: messages from the command-line layer (how a legacy flag was mapped), printed at start."""

    def __post_init__(self) -> None:
        check_declared(self)
        self._check_combinations()
        self._fill_from_recipe()

    def _check_combinations(self) -> None:
        """The rules that join options; one value's rules are in its declaration."""
        rules = [
            (not (self.data and self.dataset in ("synthetic", "digits")),
             f"--data and --dataset {self.dataset} exclude each other: drop one"),
            (not (self.freeze_features and self.freeze_epochs),
             "--freeze-features freezes the features for the whole run, --freeze-epochs N for N epochs: keep one"),
            (not self.nesterov or self.momentum > 0, "--nesterov needs a momentum above 0"),
            (not (self.nesterov and self.opt not in (None, "sgd", "sgd_nesterov")),
             f"--nesterov is for SGD; --opt {self.opt} has none"),
            (self.loss_scale is None or self.mixed_precision in (None, "fp16"),
             "--loss-scale only applies to fp16: add --mixed-precision fp16 (or --amp)"),
            (not (self.gpu_decode and self.dataset == "synthetic"), "--gpu-decode has nothing to decode with --dataset synthetic"),
            (self.compile or (self.compile_mode == "default" and self.compile_backend == "inductor"),
             "--compile-mode and --compile-backend choose how --compile compiles: add --compile"),
            (not self.streaming or bool(self.data),
             "--streaming reads parquet files: give --data with a hub dataset name or a local parquet folder"),
            (not (self.streaming and self.gpu_decode), "--gpu-decode is not available with --streaming yet: drop one"),
            (not (self.streaming and self.ra_sampler), "--ra-sampler is not available with --streaming: drop one"),
            (self.hub_strategy == "end" or self.push_to_hub, "--hub-strategy every_save needs --push-to-hub"),
            (not self.push_to_hub or bool(self.hub_model_id),
             "--push-to-hub needs --hub-model-id USER/NAME (the repo to create or update)"),
            (not self.evaluate or bool(self.resume or self.pretrained),
             "--evaluate needs weights: add --resume CHECKPOINT_DIR or --pretrained WEIGHTS"),
        ]
        for holds, message in rules:
            if not holds:
                raise UsageError(message)

    @property
    def uses_embedded_data(self) -> bool:
        return self.dataset == "digits" or (self.dataset == "auto" and not self.data)

    def _fill_from_recipe(self) -> None:
        """Unset options take the recipe's values, once, when the config is built (building it again from its own
        values changes nothing). The sizes stay: they depend on the images too (`resolve_sizes`)."""
        if self.recipe is None:
            self.recipe = "finetune" if self.pretrained is not None and not self.evaluate else \
                "digits" if self.uses_embedded_data else "torchvision"
        # With --pretrained the weights decide the architecture (the runner reads it off them) unless -a says.
        if self.arch is None and self.pretrained is None:
            self.arch = recipe_value(self.recipe, "arch")
        for name in RECIPES[self.recipe].values:
            if name not in SIZE_OPTIONS and name != "arch" and getattr(self, name) is None:
                setattr(self, name, recipe_value(self.recipe, name, self.arch))
        if self.freeze_features:
            self.freeze_epochs = 0  # frozen all run: the recipe's unfreezing does not apply
        if self.nesterov and self.opt == "sgd":
            self.opt = "sgd_nesterov"

    def resolve_sizes(self, small_images: bool, weights_sizes: Optional[tuple] = None) -> tuple[int, int, int]:
        """(training crop, validation resize, validation crop).

        For ImageNet-sized images when you give none of the three: the starting weights' own sizes (their
        transforms' meta), else the recipe's (modern: 176 / 232 / 224). Otherwise unset ones follow from the
        training crop: validation crop = training crop, resize = crop x 256/224 (torchvision's ratio), or no margin
        at all below 64 px (CIFAR, digits)."""
        given = (self.image_size, self.val_resize_size, self.val_crop_size)
        if not small_images and given == (None, None, None) and weights_sizes:
            return tuple(weights_sizes)  # type: ignore[return-value]
        if not small_images and given == (None, None, None):
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
