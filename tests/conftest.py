"""Shared fixtures: synthetic audio written by the tests, and ../shared when it is there."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from timnet.example import EMOTION_PITCH, tone, write_example_corpus, write_wav  # noqa: F401  (re-exported for tests)

# Tiny tensors: one thread is as fast, and far faster when another process holds the second core.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TIMNET_SHARED", REPO.parent / "shared"))
EMODB_16K = SHARED / "data" / "emodb-16k-subset"
EMODB_22K = SHARED / "data" / "emodb-22k-2s"
WEIGHTS = SHARED / "data" / "timnet-weights"

needs_shared = pytest.mark.skipif(not (EMODB_16K.is_dir() and WEIGHTS.is_dir()),
                                  reason=f"needs ../shared (real EMO-DB audio and the authors' weights), not found at {SHARED}")


@pytest.fixture
def make_wav(tmp_path):
    return lambda name, **kw: write_wav(tmp_path / name, **kw)


def emodb_tree(root: Path, **kw) -> Path:
    """A small EMO-DB in its distributed layout (wav/03a01Wa.wav), class-separable audio."""
    return write_example_corpus(root, **kw)


@pytest.fixture
def emodb_root(tmp_path) -> Path:
    return emodb_tree(tmp_path / "EMODB")
