"""TIM-Net speech emotion recognition in PyTorch, faithful to Ye et al. (ICASSP 2023)."""

__version__ = "0.1.0"

from .config import Config, load_config  # noqa: E402
from .errors import BadAudioError, TimnetError  # noqa: E402

# Bound after the submodule `timnet.predict` is imported, so the name stays the function.
from .loading import load_model  # noqa: E402
from .predict import predict_files as predict  # noqa: E402

__all__ = ["Config", "load_config", "TimnetError", "BadAudioError", "predict", "load_model", "__version__"]
