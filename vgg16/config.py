"""Every option of a training run, declared once: a typed dataclass field whose `option(...)` gives its flags, help,
group and allowed values (vgg16/options.py builds the command line, the checks and docs/options.md from them).

A config is complete and frozen when built: vgg16/resolve.py layers the declared defaults, the recipe's values
for the run's architecture, a --config file and the command line, then `check_rules` checks the options that
join. Nothing here knows about devices or processes: the values that depend on the launch (workers per process,
the precision an accelerate config chose) and on the data (the sizes) come to the resolution as facts.

Over 300 lines on purpose: it is the one place every option is declared (84 of them, one to six lines each);
splitting the declarations by group would put the options a reader looks for in several files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .errors import UsageError
from .options import option
from .recipes import RECIPES

# The three sizes also depend on the images and the starting weights (vgg16.resolve.resolve_sizes).
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
SAMPLERS = ("shuffle", "balanced")
# The validation figure --best-metric keeps the best epoch by (val_loss: the lowest), or "last".
BEST_METRICS = ("last", "acc1", "macro_f1", "balanced_acc", "val_loss")
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


@dataclass(frozen=True)
class TrainConfig:
    """Every option of a run with its value: built only by `vgg16.resolve.resolve_config`, which takes the defaults,
    the recipe, a --config file and the command line in that order and checks the result once. Frozen: nothing
    fills or replaces a value after that."""

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
    image_size: int = option(
        None, "--image-size", "--train-crop-size", group=DATA, minimum=32, why="VGG halves the image five times",
        help="training crop (default: the starting weights' own, else the recipe's: 224, 176 in modern; 32 for "
        "images below 64 px)")
    val_resize_size: int = option(None, "--val-resize-size", group=DATA, minimum=32,
                                            help="resize before the validation crop (default crop x 256/224, x 1 below 64 px)")
    val_crop_size: int = option(None, "--val-crop-size", group=DATA, minimum=32,
                                          help="validation centre crop (default: the training crop)")
    interpolation: str = option("bilinear", "--interpolation", group=DATA, choices=INTERPOLATIONS,
                                help="resize interpolation (default: the starting weights' own, else bilinear)")
    hflip: float = option(None, "--hflip", group=DATA, minimum=0, maximum=1,
                                    help="horizontal flip probability in training")
    auto_augment: Optional[str] = option(
        None, "--auto-augment", group=DATA, choices=AUTO_AUGMENTS, metavar="POLICY",
        help=f"{' | '.join(AUTO_AUGMENTS)}: RandAugment, TrivialAugmentWide, AugMix or an AutoAugment policy")
    ra_magnitude: int = option(9, "--ra-magnitude", group=DATA, minimum=0, maximum=30, help="RandAugment magnitude")
    augmix_severity: int = option(3, "--augmix-severity", group=DATA, minimum=1, maximum=10, help="AugMix severity")
    random_erase: float = option(
        None, "--random-erase", group=DATA, minimum=0, maximum=1, metavar="P",
        help="probability of erasing a random rectangle (filled with the mean colour: 0 after normalisation)")
    mixup_alpha: float = option(None, "--mixup-alpha", group=DATA, minimum=0,
                                          help="mixup Beta(alpha, alpha), batch-level")
    cutmix_alpha: float = option(None, "--cutmix-alpha", group=DATA, minimum=0,
                                           help="cutmix Beta(alpha, alpha), batch-level")
    ra_sampler: bool = option(None, "--ra-sampler", group=DATA,
                                        help="repeated augmentation: each image --ra-reps times per epoch")
    ra_reps: int = option(3, "--ra-reps", group=DATA, minimum=1, help="repetitions for --ra-sampler")
    sampler: str = option(
        "shuffle", "--sampler", group=DATA, choices=SAMPLERS,
        help="shuffle: every training image once per epoch; balanced: each epoch draws every class equally often "
        "(rare classes' images repeat, with new augmentation), seeded by seed and epoch, the same stream for any "
        "process count, resumable mid-epoch")
    epoch_size: Optional[int] = option(None, "--epoch-size", group=DATA, minimum=1, metavar="DRAWS",
                                       help="images drawn per epoch with --sampler balanced (default: the training "
                                       "split's size)")
    strict_data: bool = option(False, "--strict-data", group=DATA,
                               help="stop at the first unreadable image (off: skip it, warn once, count it in "
                               "results.json)")
    streaming: bool = option(
        False, "--streaming", group=DATA,
        help="read parquet shards (a hub name or a local folder in the hub layout) as a stream: no download or "
        "conversion first; every process reads an equal, distinct part of each epoch")
    shuffle_buffer: int = option(8192, "--shuffle-buffer", group=DATA, minimum=0, metavar="ROWS",
                                 help="--streaming: rows per process held for shuffling, in memory")
    workers: int = option(None, "-j", "--workers", group=DATA, minimum=0,
                                    help="data loading workers per process (default: this process's CPUs / local processes)")

    # --- model ---
    arch: str = option(
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
    freeze_epochs: int = option(None, "--freeze-epochs", group=MODEL, minimum=0, metavar="N",
                                          help="the classifier alone for N epochs, then every layer (fastai's fine_tune)")
    backbone_lr_scale: float = option(None, "--backbone-lr-scale", group=MODEL, minimum=0, metavar="F",
                                                help="the features train at lr x F (discriminative lr)")

    # --- optimisation ---
    recipe: str = option(
        None, "--recipe", group=OPTIM, choices=tuple(RECIPES),
        help="fills every option you do not give (docs/recipes.md); default finetune with --pretrained, torchvision "
        "with --data, digits without")
    opt: str = option(None, "--opt", group=OPTIM, choices=OPTIMIZERS, help="optimizer")
    epochs: int = option(None, "--epochs", "--epoch", group=OPTIM, minimum=1, help="epochs to train")
    start_epoch: Optional[int] = option(None, "--start-epoch", group=OPTIM, minimum=0,
                                        help="epoch to start from (overrides the one stored by --resume)")
    batch_size: int = option(
        None, "-b", "--batch-size", group=OPTIM, minimum=1,
        help="per process: the global batch is batch size x processes x --grad-accum")
    grad_accum: int = option(1, "--grad-accum", group=OPTIM, minimum=1, help="micro-batches per optimizer step")
    val_batch_size: int = option(
        None, "--val-batch-size", group=OPTIM, minimum=1,
        help="validation batch per process (default: --batch-size); evaluation keeps no activations for a backward "
        "pass, so a larger one fits and finishes sooner")
    lr: float = option(None, "--lr", "--learning-rate", group=OPTIM, minimum=0, help="learning rate")
    lr_scale_by_batch: bool = option(False, "--lr-scale-by-batch", group=OPTIM,
                                     help="linear scaling rule: the lr used is --lr x global batch / 256 (printed at "
                                     "start)")
    momentum: float = option(0.9, "--momentum", "--mom", group=OPTIM, minimum=0, maximum=1, below=True,
                             help="SGD momentum")
    weight_decay: float = option(None, "--weight-decay", "--wd", group=OPTIM, minimum=0, help="weight decay")
    norm_weight_decay: Optional[float] = option(
        None, "--norm-weight-decay", group=OPTIM, minimum=0,
        help="weight decay of normalisation layers' weights and biases (- in a recipe: --weight-decay)")
    bias_weight_decay: Optional[float] = option(
        None, "--bias-weight-decay", group=OPTIM, minimum=0,
        help="weight decay of every bias (- in a recipe: --weight-decay; norm biases follow --norm-weight-decay "
        "when set)")
    nesterov: bool = option(False, "--nesterov", group=OPTIM, help="same as --opt sgd_nesterov")
    lr_scheduler: str = option(
        None, "--lr-scheduler", group=OPTIM, choices=SCHEDULERS, parse=scheduler_name, metavar="step|cosine",
        help="the lr schedule (torchvision's names StepLR and CosineAnnealingLR work too)")
    lr_step_size: int = option(None, "--lr-step-size", group=OPTIM, minimum=1,
                                         help="epochs between lr decays for step")
    lr_gamma: float = option(None, "--lr-gamma", group=OPTIM, minimum=0, maximum=1, above=True,
                                       help="the factor of each step decay")
    lr_update: str = option(
        None, "--lr-update", group=OPTIM, choices=LR_UPDATES,
        help="step: the schedule moves every optimizer step; epoch: once per epoch, as torchvision and the old "
        "scripts step theirs")
    warmup_epochs: float = option(None, "--warmup-epochs", "--lr-warmup-epochs", group=OPTIM, minimum=0,
                                            help="epochs of lr warm-up")
    lr_warmup_method: str = option(None, "--lr-warmup-method", group=OPTIM, choices=WARMUP_METHODS,
                                             help="how the warm-up rises")
    lr_warmup_decay: float = option(None, "--lr-warmup-decay", group=OPTIM, minimum=0, maximum=1, above=True,
                                              help="the warm-up's starting factor of the lr")
    lr_min: float = option(None, "--lr-min", group=OPTIM, minimum=0, help="the lr cosine ends at")
    class_weights: Optional[str] = option(
        None, "--class-weights", group=OPTIM, metavar="balanced|FILE",
        help="weigh the loss per class: balanced (n_images / (n_classes x the class's count), scikit-learn's), or "
        "a YAML/JSON file of 'class: weight' (unlisted classes weigh 1) or one weight per line (default: equal)")
    label_smoothing: float = option(None, "--label-smoothing", group=OPTIM, minimum=0, maximum=1, below=True,
                                              help="label smoothing of the loss")
    clip_grad_norm: Optional[float] = option(None, "--clip-grad-norm", group=OPTIM, minimum=0, above=True,
                                             metavar="MAX_NORM", help="clip the gradients' global norm (default off)")
    model_ema: bool = option(None, "--model-ema", group=OPTIM,
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
        "raise it for slow starts of large jobs. On NPUs it also sets HCCL_CONNECT_TIMEOUT and HCCL_EXEC_TIMEOUT "
        "(within HCCL's ranges) unless you set them")
    npu_jit_compile: bool = option(
        False, "--npu-jit-compile", group=DEVICE,
        help="on an NPU, let torch_npu compile operators just in time (torch.npu.set_compile_mode): its default on "
        "910A-class chips, where a first epoch can take minutes longer; off, the precompiled operators are used")
    npu_internal_format: str = option(
        "default", "--npu-internal-format", group=DEVICE, choices=("default", "on", "off"),
        help="on an NPU, torch.npu.config.allow_internal_format (private NPU tensor layouts): torch_npu's own "
        "default, or on / off")
    gpu_decode: bool = option(False, "--gpu-decode", group=DEVICE,
                              help="decode JPEG batches on the GPU (nvJPEG); workers only read files. NVIDIA only")

    # --- run control and outputs ---
    output_dir: str = option("./output", "--output-dir", group=RUN, help="where the run writes everything")
    print_freq: int = option(10, "-p", "--print-freq", group=RUN, minimum=1, help="log every N optimizer steps")
    evaluate: bool = option(False, "-e", "--evaluate", group=RUN, help="only evaluate --resume or --pretrained weights")
    resume: Optional[str] = option(
        None, "--resume", group=RUN, metavar="CHECKPOINT_DIR|auto",
        help="a checkpoints/... folder written by a run, or auto: the newest in --output-dir (a fresh start if none)")
    best_metric: str = option(
        "last", "--best-metric", group=RUN, choices=BEST_METRICS,
        help="which epoch's weights OUTPUT/model.safetensors holds: the last epoch's, or the best epoch's by this "
        "validation figure (val_loss: the lowest), the last epoch's then kept in OUTPUT/last/; results.json and the "
        "card say which epoch")
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

    @property
    def uses_embedded_data(self) -> bool:
        return self.dataset == "digits" or (self.dataset == "auto" and not self.data)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_rules(cfg: TrainConfig) -> None:
    """The rules that join options, each written here once; one value's rules are in its declaration."""
    rules = [
        (not (cfg.data and cfg.dataset in ("synthetic", "digits")),
         f"--data and --dataset {cfg.dataset} exclude each other: drop one"),
        (not (cfg.freeze_features and cfg.freeze_epochs),
         "--freeze-features freezes the features for the whole run, --freeze-epochs N for N epochs: keep one"),
        (cfg.opt != "sgd_nesterov" or cfg.momentum > 0,
         "--nesterov (--opt sgd_nesterov) needs a momentum above 0"),
        (not (cfg.nesterov and cfg.opt not in ("sgd", "sgd_nesterov")),
         f"--nesterov is for SGD; --opt {cfg.opt} has none"),
        # mixed_precision is None only before the launch is known (the early check); then it is the launch's.
        (cfg.loss_scale is None or cfg.mixed_precision in (None, "fp16"),
         f"--loss-scale applies to fp16, but this run uses {cfg.mixed_precision}: add --mixed-precision fp16 (or "
         "--amp), or drop --loss-scale"),
        (not (cfg.gpu_decode and cfg.dataset == "synthetic"), "--gpu-decode has nothing to decode with --dataset synthetic"),
        (cfg.compile or (cfg.compile_mode == "default" and cfg.compile_backend == "inductor"),
         "--compile-mode and --compile-backend choose how --compile compiles: add --compile"),
        (not cfg.streaming or bool(cfg.data),
         "--streaming reads parquet files: give --data with a hub dataset name or a local parquet folder"),
        (not (cfg.streaming and cfg.gpu_decode), "--gpu-decode is not available with --streaming yet: drop one"),
        (not (cfg.streaming and cfg.ra_sampler), "--ra-sampler is not available with --streaming: drop one"),
        (not (cfg.sampler == "balanced" and cfg.ra_sampler),
         "--sampler balanced and --ra-sampler each choose the epoch's images: keep one"),
        (not ((cfg.streaming or cfg.dataset == "synthetic") and (cfg.sampler == "balanced" or cfg.class_weights)),
         "--sampler balanced and --class-weights need the training labels up front: not available with --streaming "
         "or --dataset synthetic"),
        (cfg.epoch_size is None or cfg.sampler == "balanced", "--epoch-size is for --sampler balanced: add it"),
        (cfg.hub_strategy == "end" or cfg.push_to_hub, "--hub-strategy every_save needs --push-to-hub"),
        (not cfg.push_to_hub or bool(cfg.hub_model_id),
         "--push-to-hub needs --hub-model-id USER/NAME (the repo to create or update)"),
        (not cfg.evaluate or bool(cfg.resume or cfg.pretrained),
         "--evaluate needs weights: add --resume CHECKPOINT_DIR or --pretrained WEIGHTS"),
    ]
    for holds, message in rules:
        if not holds:
            raise UsageError(message)
