"""A fast path's verdict follows the code that would run, as a notebook changes it.

In one process, after the fast paths have said yes to the reference model, a researcher changes it the ways a
notebook does: `TemporalAwareBlock.forward` edited in place (`%autoreload` keeps the function and gives it a new
`__code__`), a subclass typed in a cell (module `__main__`), `network.batch_norm` replaced in memory, a dropout rate
set on the layers. Every path (the GEMM convolution, the CPU kernel, recomputation, packed units) then trains the
changed model exactly (float64), or declines in one line where it cannot compute the change (the CPU kernel
implements the reference block only). A worker process whose code is not the caller's refuses in one line.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
import torch.nn.functional as F
from test_model_variants import PATHS, TOLERANCE, accelerated, build, gelu_forward, train_alone, train_packed

from timnet.accel import check
from timnet.accel.accelerate import FastPathDeclined, accelerate, reference
from timnet.accel.blas import cpu
from timnet.accel.code_key import machine, plain_subclass
from timnet.accel.packed_model import pack_declines
from timnet.core.config import TIMNetConfig
from timnet.core.errors import TimnetError
from timnet.model import network
from timnet.model.network import CausalConv1d, SpatialDropout1d, TemporalAwareBlock, TIMNet
from timnet.training.same_code import check_same_code, model_digests


@contextlib.contextmanager
def edited(function, new_code):
    """`function.__code__` replaced in place, as IPython's %autoreload does, and put back after."""
    old = function.__code__
    function.__code__ = new_code
    try:
        yield
    finally:
        function.__code__ = old


@contextlib.contextmanager
def patched_batch_norm():
    """`network.batch_norm` replaced in memory by one that scales the normalised values."""
    original = network.batch_norm
    network.batch_norm = lambda bn, h: original(bn, h) * 1.5
    try:
        yield
    finally:
        network.batch_norm = original


def notebook_class(base: type, body: dict | None = None) -> type:
    """A subclass of `base` as a notebook cell defines it: module `__main__`, overriding what `body` holds."""
    return type(f"My{base.__name__}", (base,), {"__module__": "__main__", **(body or {})})


def plain_notebook_model() -> TIMNet:
    """The reference model, every TIMNet, block and conv an instance of a `__main__` subclass overriding nothing."""
    model = build("reference")
    for m in model.modules():
        for base in (TIMNet, TemporalAwareBlock, CausalConv1d):
            if type(m) is base:
                m.__class__ = notebook_class(base)
    return model


@contextlib.contextmanager
def changed(change: str):
    """The small float64 model with `change` made, undone after."""
    if change == "forward edited in place (GELU)":
        with edited(TemporalAwareBlock.forward, gelu_forward.__code__):
            yield build("reference")
    elif change == "__main__ subclasses overriding nothing":
        yield plain_notebook_model()
    elif change == "batch_norm patched in memory":
        with patched_batch_norm():
            yield build("reference")
    else:  # a setting: the dropout rate, set on the layers
        model = build("reference")
        for m in model.modules():
            if isinstance(m, SpatialDropout1d):
                m.p = 0.4
        yield model


CHANGES = [
    "forward edited in place (GELU)",
    "__main__ subclasses overriding nothing",
    "batch_norm patched in memory",
    "dropout rate 0.4",
]
KERNEL_MAY_DECLINE = {"forward edited in place (GELU)", "batch_norm patched in memory"}  # it computes the reference


@pytest.mark.parametrize("change", CHANGES)
def test_every_fast_path_follows_a_change_made_after_its_verdict(change):
    for asked in PATHS.values():  # the verdicts on the model as it was, kept in this process and on disk
        assert not accelerate(build("reference"), **asked).declined
    with changed(change) as model:
        want = train_alone(copy.deepcopy(model))
        for path, asked in PATHS.items():
            fast = copy.deepcopy(model)
            done, lines = accelerated(fast, asked)
            assert lines == done.declined and all(len(line.splitlines()) == 1 for line in lines)
            for got, expected in zip(train_alone(fast), want, strict=True):
                torch.testing.assert_close(got, expected, **TOLERANCE)
            assert done.blas == asked["blas"], (path, lines)  # the GEMM convolution computes every change here
            assert done.recompute == asked.get("recompute", False), (path, lines)
            if change in KERNEL_MAY_DECLINE and asked.get("kernel"):
                assert not done.kernel and lines and all("the CPU kernel steps aside" in x for x in lines), lines
            else:
                assert not lines and done.kernel == asked.get("kernel", False), (path, lines)
            assert type(reference(fast)) is type(model)  # the model's own class back
        assert pack_declines(model, torch.device("cpu")) is None
        for got, expected in zip(train_packed(copy.deepcopy(model)), want, strict=True):
            torch.testing.assert_close(got, expected, **TOLERANCE)


def centred_forward(self, x):
    """CausalConv1d.forward edited to pad both sides: no longer causal."""
    k, d = self.kernel_size[0], self.dilation[0]
    padded = F.pad(x.transpose(1, 2), ((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2))
    return F.conv1d(padded, self.weight, self.bias, dilation=d).transpose(1, 2)


def test_the_gemm_verdict_is_the_convs_own_and_an_edited_conv_is_checked_again():
    """The block's activation edited: the conv's key stays (its check is not run again), the model's changes. The
    conv itself edited in place: the GEMM convolution steps aside in one line, the edited conv runs."""
    model = build("reference")
    conv, before = model.forward_blocks[0].conv1, check.signature(model)
    conv_key = check.signature(conv, "cpu", "gemm", "numpy")
    with edited(TemporalAwareBlock.forward, gelu_forward.__code__):
        assert check.signature(conv, "cpu", "gemm", "numpy") == conv_key and check.signature(model) != before
    assert accelerate(copy.deepcopy(model), blas="numpy").blas == "numpy"
    x = torch.randn(3, 30, 39, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    with edited(CausalConv1d.forward, centred_forward.__code__):
        assert check.signature(conv, "cpu", "gemm", "numpy") != conv_key
        with torch.no_grad():
            want = model.eval()(x)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            done = accelerate(model, blas="numpy", kernel=True)
        assert [str(w.message) for w in caught if issubclass(w.category, FastPathDeclined)] == done.declined
        assert done.blas == "reference" and not done.kernel and all(len(x.splitlines()) == 1 for x in done.declined)
        assert done.declined[0].startswith("timnet: the GEMM convolution steps aside: its output differs from")
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(x), want, rtol=1e-12, atol=1e-12)


def test_a_notebook_class_is_keyed_by_its_code_not_its_name():
    """Two `__main__` classes of one name (a notebook's cell run again with other code) get different keys; the
    same code again gets the same key (the check kept on disk serves it in the next session)."""

    def build_with(block_class: type) -> TIMNet:
        model = build("reference")
        for m in model.modules():
            if type(m) is TemporalAwareBlock:
                m.__class__ = block_class
        return model

    plain, again = notebook_class(TemporalAwareBlock), notebook_class(TemporalAwareBlock)
    gelu = notebook_class(TemporalAwareBlock, {"forward": gelu_forward})
    assert plain.__qualname__ == gelu.__qualname__ and plain.__module__ == gelu.__module__ == "__main__"
    keys = [check.signature(build_with(c)) for c in (plain, again, gelu)]
    assert keys[0] == keys[1] != keys[2]
    assert plain_subclass(plain, TemporalAwareBlock) and not plain_subclass(gelu, TemporalAwareBlock)


def test_the_key_names_the_settings_and_the_machine(monkeypatch):
    model = build("reference")
    key = check.signature(model)
    model.forward_blocks[1].drop.p = 0.3
    assert check.signature(model) != key
    model.forward_blocks[1].drop.p = build("reference").forward_blocks[1].drop.p
    assert check.signature(model) == key
    info = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx2" in info:  # the CPU's vector extensions, torch's and numba's versions are in the key
        assert "avx2" in cpu() and torch.backends.cpu.get_cpu_capability() in cpu()
    assert torch.__version__ in machine() and "numba" in machine()
    monkeypatch.setattr(check, "machine", lambda: "another CPU")
    assert check.signature(model) != key


SCRIPT = textwrap.dedent(
    """
    import json, warnings
    import torch
    import torch.nn.functional as F
    from timnet.accel.accelerate import accelerate, reference
    from timnet.accel.check import signature
    from timnet.core.config import TIMNetConfig
    from timnet.model.network import TemporalAwareBlock, TIMNet, batch_norm

    def gelu_forward(self, x):
        h = self.drop(F.gelu(batch_norm(self.bn1, self.conv1(x))))
        h = self.drop(F.gelu(batch_norm(self.bn2, self.conv2(h))))
        return x * torch.sigmoid(h)

    torch.manual_seed(0)
    model = TIMNet(TIMNetConfig(n_classes=4, n_mfcc=39, levels=3)).double()
    key = signature(model)
    first = accelerate(model, blas="numpy", kernel=True)
    TemporalAwareBlock.forward.__code__ = gelu_forward.__code__  # what %autoreload does after the file's edit
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        second = accelerate(model, blas="numpy", kernel=True)
    x = torch.randn(3, 30, 39, dtype=torch.float64)
    with torch.no_grad():
        got = model.eval()(x)
        want = reference(model)(x)  # the edited model, no fast path
    print(json.dumps(dict(key=key, first=first.kernel, second=second.kernel, declined=second.declined,
                          blas=second.blas, gap=(got - want).abs().max().item())))
    """
)


def test_one_process_accelerate_edit_accelerate_follows_the_edit():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["first"] and not out["second"] and out["blas"] == "numpy"
    assert len(out["declined"]) == 1 and out["declined"][0].startswith("timnet: the CPU kernel steps aside: it co")
    assert out["gap"] < 1e-12  # the second model computes the edited block
    model = TIMNet(TIMNetConfig(n_classes=4, n_mfcc=39, levels=3))
    assert out["key"] == check.signature(model), "the key of the same model holds across processes"


def test_a_worker_refuses_code_that_differs_from_its_callers(tmp_path, mfcc):
    from conftest import train

    from timnet import load_config

    config = load_config("EMODB").to_dict()
    check_same_code(config, model_digests(config))  # the same code: no word
    with patched_batch_norm(), pytest.raises(TimnetError) as caught:
        train(tmp_path, mfcc, folds=2, epochs=1, workers=2)
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    assert "patched_batch_norm.<locals>.<lambda>" in message and "--workers 1" in message and "save" in message


@pytest.mark.slow
def test_a_run_in_the_same_process_after_an_edit_trains_the_edit(tmp_path, mfcc):
    """A notebook's situation: a run, `TemporalAwareBlock.forward` edited in place, another run in the same
    process. The second run trains the edited block: the CPU kernel it asked for steps aside, and the run equals
    one that never asked for it, bit for bit."""
    from conftest import assert_same_units, train

    before = train(tmp_path / "before", mfcc, folds=2, epochs=1, kernel="on", blas="numpy")
    with edited(TemporalAwareBlock.forward, gelu_forward.__code__):
        after = train(tmp_path / "after", mfcc, folds=2, epochs=1, kernel="on", blas="numpy")
        unasked = train(tmp_path / "unasked", mfcc, folds=2, epochs=1, kernel="off", blas="numpy")
    runs = {
        name: tmp_path / name / "Models" / r.run_id
        for name, r in zip(("before", "after", "unasked"), (before, after, unasked))
    }
    assert_same_units(runs["after"], runs["unasked"])
    first = torch.load(runs["before"] / "fold_1.pt", weights_only=True)["test_probs"]
    assert not torch.allclose(first, torch.load(runs["after"] / "fold_1.pt", weights_only=True)["test_probs"])
