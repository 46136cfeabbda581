"""TIM-Net speech emotion recognition in PyTorch, faithful to Ye et al. (ICASSP 2023).

The folders are the architecture, lower layers first (each imports only from those before it):
core -> data -> model -> accel -> training -> serving -> analysis -> studies -> the CLI and notebook helpers.
"""

import importlib

from .core.config import Config, load_config
from .core.errors import BadAudioError, TimnetError
from .core.version import __version__

# Bound after the submodule `timnet.serving.predict` is imported, so the name stays the function.
from .serving.loading import load_model
from .serving.predict import predict_files as predict

__all__ = ["Config", "load_config", "TimnetError", "BadAudioError", "predict", "load_model", "__version__"]

# Modules that lived at the top before the package was laid out by concept: `timnet.cross_corpus.X` still works.
MOVED = {
    "cross_corpus": "analysis.cross_corpus", "evaluate": "analysis.evaluate", "tsne": "analysis.tsne",
    "config": "core.config", "errors": "core.errors", "report": "core.report", "corpora": "data.corpora",
    "features": "data.mfcc_extraction", "splits": "data.splits", "runs": "training.run_store", "train": "training.run",
    "loading": "serving.loading", "export": "serving.export", "timeline": "serving.timeline", "sweep": "studies.sweep",
}  # fmt: skip


def __getattr__(name: str):
    if name in MOVED:
        return importlib.import_module(f"{__name__}.{MOVED[name]}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
