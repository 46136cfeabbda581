"""What a fast path's verdict depends on, as one key: the code that would run, read from memory at the moment.

A verdict kept under a file's hash or a function object goes stale in a notebook: `%autoreload` gives the same
function a new `__code__`, a class typed in a cell has no file, a helper can be patched in memory
(`network.batch_norm = ...`). So `model_code` walks, from every module's `forward` (and its hooks), the methods
(`self.name`, over the class's MRO) and module functions (its globals, and the functions of modules it names)
that the code names, and hashes each one's bytecode, names and constants (nested code included); libraries whose
version is in the key (torch, numpy, numba, Python's own) are not walked. `model_settings` adds the structure:
every layer's class, its plain attributes (a dropout rate, a dilation), the parameters' names, shapes and whether
they train. `machine` names what runs it: the CPU (model, vector extensions) and the libraries' versions.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import platform
import sys
import types

import numpy as np
import torch
from torch import nn

from .blas import cpu

# Not walked: their code is named by their versions (`machine`).
LIBRARIES = {"torch", "numpy", "numba", "functorch", "builtins", *sys.stdlib_module_names}
# What a class's namespace holds without defining anything (a subclass that overrides nothing: `plain_subclass`).
BOOKKEEPING = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__"}
BOOKKEEPING |= {"__firstlineno__", "__static_attributes__"}  # Python 3.13
SIMPLE = (bool, int, float, str, bytes, type(None))


def _is_library(obj) -> bool:
    return (getattr(obj, "__module__", None) or "builtins").split(".")[0] in LIBRARIES


def _function(obj) -> types.FunctionType | None:
    """The Python function behind a method, property, static or class method, or numba dispatcher, or None."""
    obj = getattr(obj, "__func__", None) or getattr(obj, "fget", None) or getattr(obj, "py_func", None) or obj
    return obj if isinstance(obj, types.FunctionType) else None


def _code_text(code: types.CodeType) -> tuple:
    """A code object's bytecode, names and constants (nested code recursively); not its file or line numbers."""
    consts = tuple(_code_text(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return code.co_code, code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars, consts


def _names(code: types.CodeType) -> list[str]:
    return [*code.co_names, *(n for c in code.co_consts if isinstance(c, types.CodeType) for n in _names(c))]


def _plain(value) -> str:
    """repr of a setting (a number, a string, a tuple of them, a dataclass), else its type's name."""
    if isinstance(value, SIMPLE) or dataclasses.is_dataclass(value) and not isinstance(value, type):
        return repr(value)
    if isinstance(value, (tuple, list)) and all(isinstance(v, SIMPLE) for v in value):
        return repr(value)
    return type(value).__qualname__


class _Walk:
    """The functions reachable from some roots, each walked once, with their code's text."""

    def __init__(self):
        self.found: dict[str, tuple] = {}
        self.seen: set[int] = set()

    def function(self, func, owner: type | None) -> None:
        func = _function(func)
        if func is None or id(func) in self.seen or _is_library(func):
            return
        self.seen.add(id(func))
        code = func.__code__
        defaults = tuple(map(_plain, (func.__defaults__ or ()) + tuple((func.__kwdefaults__ or {}).values())))
        name = f"{func.__module__}.{func.__qualname__}"
        name = name if name not in self.found else f"{name}#{len(self.found)}"  # two lambdas of one function
        self.found[name] = (_code_text(code), defaults)
        for cell in func.__closure__ or ():
            with_contents = getattr(cell, "cell_contents", None) if cell is not None else None
            self.function(with_contents, owner)
        names = _names(code)
        modules = [v for n in names if isinstance(v := func.__globals__.get(n), types.ModuleType)]
        for name in names:
            self.method(owner, name)
            value = func.__globals__.get(name)
            if isinstance(value, type) and not _is_library(value):
                self.cls(value)
            else:
                self.function(value, None)
            for module in modules:
                if not _is_library(module):
                    self.function(getattr(module, name, None), None)

    def method(self, owner: type | None, name: str) -> None:
        """Every definition of `name` on the class's MRO (an override and the `super()` it calls)."""
        for klass in getattr(owner, "__mro__", ()):
            if name in vars(klass):
                self.function(vars(klass)[name], owner)

    def cls(self, klass: type) -> None:
        if id(klass) not in self.seen:
            self.seen.add(id(klass))
            for name in vars(klass):
                self.method(klass, name)


def reached(model: nn.Module) -> dict[str, tuple]:
    """{function name: its code's text} of everything the model's modules' forwards (and hooks) reach."""
    walk = _Walk()
    for m in model.modules():
        walk.method(type(m), "forward")
        for hooks in (m._forward_pre_hooks, m._forward_hooks, m._backward_hooks):
            for hook in hooks.values():
                walk.function(hook, type(m))
    return walk.found


def _digest(value) -> str:
    return hashlib.sha256(repr(value).encode()).hexdigest()


def code_digests(model: nn.Module) -> dict[str, str]:
    """{function name: the SHA-256 of its code} for the code `model`'s forward reaches (`reached`): what travels
    with a unit to a worker process, which compares it with its own."""
    return {name: _digest(text) for name, text in reached(model).items()}


def model_code(model: nn.Module) -> str:
    """The SHA-256 of the code `model`'s forward reaches."""
    return _digest(sorted(code_digests(model).items()))


def model_settings(model: nn.Module) -> tuple:
    """Every layer's name, class and plain settings, and the parameters' names, shapes and trainability."""
    layers = tuple(
        (
            name,
            f"{type(m).__module__}.{type(m).__qualname__}",
            tuple((k, _plain(v)) for k, v in sorted(vars(m).items()) if not k.startswith("_") and k != "training"),
            m.extra_repr(),
        )
        for name, m in model.named_modules()
    )
    return layers, tuple((n, tuple(p.shape), p.requires_grad) for n, p in model.named_parameters())


@functools.cache
def machine() -> str:
    """The CPU (model and vector extensions), Python and the libraries the fast paths run on."""
    try:
        numba = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        numba = "-"
    return "|".join((cpu(), platform.python_version(), torch.__version__, np.__version__, f"numba {numba}"))


def plain_subclass(cls: type, reference: type) -> bool:
    """Whether `cls` is `reference` or a subclass of it that defines nothing (a class typed in a notebook, say):
    it runs exactly the reference's code."""
    if not (isinstance(cls, type) and issubclass(cls, reference)):
        return False
    return all(set(vars(k)) <= BOOKKEEPING for k in cls.__mro__[: cls.__mro__.index(reference)])
