"""One exception family, so the CLI can print one clear line instead of a traceback."""


class TimnetError(Exception):
    """A problem the user can fix; the message names the file and what to do."""


class BadAudioError(TimnetError):
    """An audio file that cannot be turned into features (corrupt, empty, silent, too short)."""

    def __init__(self, path, problem: str, fix: str = "remove or replace the file, or pass --skip-bad to skip it"):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem} — {fix}")


def one_line_warnings() -> None:
    """Warnings as the CLI prints them, `warning: <message>`: in the CLI and in every process that trains for it (a
    pool or Ray worker would print Python's `file:line: Category: message` otherwise)."""
    import warnings

    warnings.formatwarning = lambda message, *rest, **kw: f"warning: {message}\n"


def require(module: str, extra: str, what: str, instead: str = ""):
    """`module` imported, or one line saying which extra of `pip install` brings it (pyproject.toml), and what to
    do instead (`instead`, where there is another way)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        other = f" (or {instead})" if instead else ""
        line = f"{what} needs {module.split('.')[0]}: python3 -m pip install 'timnet[{extra}]'{other}"
        raise TimnetError(line) from None
