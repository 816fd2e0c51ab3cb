"""VGG image classification on Hugging Face Accelerate: model, data, training loop, metrics, checkpoints."""

from .config import TrainConfig
from .hub import from_pretrained
from .model import build_model

__all__ = ["TrainConfig", "build_model", "from_pretrained"]
__version__ = "0.1.0"
