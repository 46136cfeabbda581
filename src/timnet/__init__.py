"""TIM-Net speech emotion recognition in PyTorch, faithful to Ye et al. (ICASSP 2023)."""
from .config import Config, load_config
from .errors import BadAudioError, TimnetError

__version__ = "0.1.0"

__all__ = ["Config", "load_config", "TimnetError", "BadAudioError", "predict", "__version__"]


def predict(*args, **kwargs):
    """Predict emotions of audio files; see `timnet.predict.predict_files`."""
    from .predict import predict_files

    return predict_files(*args, **kwargs)
