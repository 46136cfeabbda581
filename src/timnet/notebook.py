"""What the notebooks add to the library: an error a user can fix shows as ONE line that names the notebook's
setting (`data_dir`, not the CLI's `--data`), not as a traceback."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .core.errors import TimnetError

if TYPE_CHECKING:
    from .training.execution import Execution

# CLI option -> the notebooks' parameter that does the same
NOTEBOOK_NAMES = {
    "--data": "data_dir",
    "--mfcc": "mfcc_dir",
    "--mfcc-dir": "mfcc_dir",
    "--out": "mfcc_dir",
    "--run": "run_id",
    "--models": "models_dir",
    "--logs": "logs_dir",
    "--results": "results_dir",
    "--set": "overrides",
    "--overwrite": "overwrite = True",
    "--skip-bad": "skip_bad = True",
    "--trust-pickle": "trust_pickle = True",
    "--batch-size": "batch_size",
    "--tsne-seed": "tsne_seed",
}
OPTION = re.compile(r"--[a-z][a-z-]*")


def in_notebook_terms(message: str) -> str:
    """A CLI-worded message with each `--option` replaced by the notebook parameter (`--epochs` -> `epochs`)."""
    return OPTION.sub(lambda m: NOTEBOOK_NAMES.get(m.group(0), m.group(0)[2:].replace("-", "_")), message)


def one_line(shell, etype, value, tb, tb_offset=None) -> None:
    """IPython's custom handler for TimnetError, which prints it (IPython shows nothing of its own then); the
    cell still fails, so Run All and papermill stop there."""
    print(f"timnet: error: {in_notebook_terms(str(value))}", file=sys.stderr)


def show_errors_as_one_line() -> None:
    """In a Jupyter notebook, show TimnetError as one line; elsewhere (plain Python) do nothing."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.set_custom_exc((TimnetError,), one_line)


def execution(
    models_dir: str = "Models",
    logs_dir: str = "logs",
    results_dir: str = "Results",
    device: str = "auto",
    workers: int | None = None,
) -> Execution:
    """The notebook's parameters as the one `Execution` every command that trains takes (the CLI builds it from its
    options)."""
    from .training.execution import Execution
    from .training.run_store import Roots

    return Execution(Roots(Path(models_dir), Path(logs_dir), Path(results_dir)), device=device, workers=workers)
