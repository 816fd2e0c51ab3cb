"""VGG image classification on Hugging Face Accelerate: model, data, training loop, metrics, checkpoints."""

from .backend import require_torch

require_torch()  # first: a device backend torch cannot load is one line, not a traceback

from .config import TrainConfig  # noqa: E402
from .hub import from_pretrained  # noqa: E402
from .model import build_model  # noqa: E402
from .resolve import config_of  # noqa: E402

__all__ = ["TrainConfig", "build_model", "config_of", "from_pretrained"]
__version__ = "0.1.0"
