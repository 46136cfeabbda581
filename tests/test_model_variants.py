"""A researcher changes the model: every fast path trains the changed model exactly, or steps aside out loud.

Variants of the temporal-aware block, as a researcher would write them (a subclass, or `model/network.py` edited in
place, which keeps the class and changes its code): an extra layer with parameters, GELU instead of ReLU, kernel
size 3, no gate. Each trains a few Adam steps in float64 through every path this machine has (the CPU kernel,
torch's and numpy's products, recomputation, packed units; captured steps where CUDA is) and through the reference
model alone. Each path either ends on the reference's weights (to rounding) or declines with its one line.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import model_config
from torch import nn

from timnet import load_config
from timnet.accel.accelerate import FastPathDeclined, accelerate
from timnet.accel.packed_model import PackedTIMNet, pack_declines
from timnet.model import network
from timnet.model.network import TemporalAwareBlock, TIMNet, batch_norm
from timnet.training.step import PackedOptimizer, capture_declines

STEPS = 3
TOLERANCE = dict(rtol=1e-8, atol=1e-10)


class ExtraLayer(TemporalAwareBlock):
    """One more layer with parameters: a 1x1 mixing of the gated output."""

    def __init__(self, *args):
        super().__init__(*args)
        self.mix = nn.Linear(self.conv1.in_channels, self.conv1.in_channels)

    def forward(self, x):
        return self.mix(super().forward(x))


class NoGate(TemporalAwareBlock):
    """The paper's ablation without the temporal-aware gate: the block's output is h itself."""

    def forward(self, x):
        h = self.drop(F.relu(batch_norm(self.bn1, self.conv1(x))))
        return self.drop(F.relu(batch_norm(self.bn2, self.conv2(h))))


def gelu_forward(self, x):
    """TemporalAwareBlock.forward with GELU instead of ReLU: what `model/network.py` says after a one-word edit."""
    h = self.drop(F.gelu(batch_norm(self.bn1, self.conv1(x))))
    h = self.drop(F.gelu(batch_norm(self.bn2, self.conv2(h))))
    return x * torch.sigmoid(h)


def build(variant: str) -> TIMNet:
    """A small float64 TIM-Net (3 levels) with `variant` blocks."""
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4, levels=3, kernel_size=3 if variant == "kernel_size 3" else 2))
    kind = {"extra layer": ExtraLayer, "no gate": NoGate}.get(variant)
    if kind:
        c = model.config
        for name in ("forward_blocks", "backward_blocks"):
            blocks = [kind(c.filters, c.kernel_size, 2**i, c.dropout) for i in range(c.levels)]
            setattr(model, name, nn.ModuleList(blocks))
    return model.double()


@pytest.fixture(params=["reference", "extra layer", "gelu (edited in place)", "kernel_size 3", "no gate"])
def variant(request, monkeypatch):
    if request.param.startswith("gelu"):
        monkeypatch.setattr(network.TemporalAwareBlock, "forward", gelu_forward)
    return request.param


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    draw = torch.Generator().manual_seed(2)
    y = torch.randint(0, 4, (STEPS, 6), generator=draw)
    return [(torch.randn(6, 30, 39, generator=draw, dtype=torch.float64) + yb[:, None, None], yb) for yb in y]


def trained(model: TIMNet, logits: list[torch.Tensor]) -> list[torch.Tensor]:
    """What a path's training is compared on: the logits of every step, and the weights after the last, except the
    block convs' biases (BatchNorm takes the mean out right after them: their gradient is rounding noise, which
    Adam's normalised step turns into steps of lr either way)."""
    kept = [
        p.detach().clone()
        for n, p in model.named_parameters()
        if not ("blocks." in n and ".conv" in n and n.endswith(".bias"))
    ]
    return [*logits, *kept]


def train_alone(model: TIMNet) -> list[torch.Tensor]:
    """STEPS Adam steps (dropout from torch's RNG, seeded)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=False)
    torch.manual_seed(1)
    model.train()
    logits = []
    for x, y in batches():
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        logits.append(out.detach())
    return trained(model, logits)


def train_packed(model: TIMNet) -> list[torch.Tensor]:
    """The same steps as a pack of one (its dropout stream seeded as `train_alone` seeds torch's)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, foreach=False)
    packed = PackedTIMNet([model])
    optimizer = PackedOptimizer(packed.params, [opt], lambda params: torch.optim.Adam(params, lr=1e-2, foreach=False))
    stream = torch.Generator().manual_seed(1)
    logits = []
    for x, y in batches():
        out = packed.forward(x[None], torch.zeros(1, dtype=torch.long), [stream])[0]
        F.cross_entropy(out, y).backward()
        optimizer.plan((0,))
        optimizer.step()
        logits.append(out.detach())
    model.load_state_dict(packed.unit_state(0))
    return trained(model, logits)


def accelerated(model: TIMNet, asked: dict):
    """`accelerate(model, **asked)` and the decline lines it warned (each fast path that stepped aside)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = accelerate(model, **asked)
    return done, [str(w.message) for w in caught if issubclass(w.category, FastPathDeclined)]


PATHS = {  # what `accelerate` is asked for on the CPU
    "CPU kernel": dict(blas="numpy", kernel=True),
    "torch's products": dict(blas="torch"),
    "numpy's products": dict(blas="numpy"),
    "CPU kernel, recomputed": dict(blas="numpy", kernel=True, recompute=True),
    "torch's products, recomputed": dict(blas="torch", recompute=True),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_cpu_path_trains_the_variant_or_declines_out_loud(variant, path):
    model = build(variant)
    want = train_alone(copy.deepcopy(model))
    fast = copy.deepcopy(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        done = accelerate(fast, **PATHS[path])
    lines = [str(w.message) for w in caught if issubclass(w.category, FastPathDeclined)]
    assert lines == done.declined and all(len(line.splitlines()) == 1 for line in lines)
    got = train_alone(fast)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCE)  # whatever ran: the variant's own training
    asked = PATHS[path]
    if variant == "reference":  # nothing declines for the model the paths were written for
        assert not lines and done.kernel == asked.get("kernel", False) and done.blas == asked["blas"]
    elif asked.get("kernel"):  # the kernel implements the reference block only
        assert not done.kernel and any("the CPU kernel" in line for line in lines), lines
    assert done.blas == asked["blas"], "the GEMM convolution computes any CausalConv1d: it follows every variant"
    assert done.recompute == asked.get("recompute", False), "recomputation re-runs the blocks as written"


def test_an_edited_block_is_never_trained_as_the_old_one(monkeypatch):
    """The issue's own case: GELU written into `TemporalAwareBlock.forward`. The CPU kernel (the default CPU path)
    steps aside with one line naming itself, and the accelerated model computes the edited block, not the old one."""
    x = batches()[0][0]
    model = build("reference").eval()
    with torch.no_grad():
        old = model(x)
    monkeypatch.setattr(network.TemporalAwareBlock, "forward", gelu_forward)
    with torch.no_grad():
        want = model(x)  # the edited reference
    with pytest.warns(FastPathDeclined, match=r"^timnet: the CPU kernel steps aside: it computes .* away from"):
        done = accelerate(model, blas="numpy", kernel=True)
    assert not done.kernel and done.blas == "numpy"  # the GEMM convolutions still run: they follow the edit
    with torch.no_grad():
        got = model(x)
    assert (want - old).abs().max() > 1e-4  # the edit matters
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_packed_units_train_the_variant(variant):
    """Packed units run the model's own forward under vmap: every variant trains packed as it trains alone."""
    model = build(variant)
    assert pack_declines(model, torch.device("cpu")) is None
    want = train_alone(copy.deepcopy(model))
    for g, w in zip(train_packed(copy.deepcopy(model)), want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCE)


class DropoutAfterGate(TemporalAwareBlock):
    """A random draw of its own (nn.Dropout): vmap cannot draw it from each unit's stream."""

    def __init__(self, *args):
        super().__init__(*args)
        self.extra = nn.Dropout(0.2)

    def forward(self, x):
        return self.extra(super().forward(x))


def test_packing_declines_in_one_line_what_vmap_cannot_draw_per_unit():
    model = build("reference")
    c = model.config
    model.forward_blocks[0] = DropoutAfterGate(c.filters, c.kernel_size, 1, c.dropout).double()
    reason = pack_declines(model, torch.device("cpu"))
    assert reason and len(reason.splitlines()) == 1 and "cannot run" in reason, reason


@pytest.mark.skipif(not torch.cuda.is_available(), reason="captured steps are CUDA graphs: no CUDA here")
def test_packed_and_captured_steps_earn_their_place_on_cuda(variant):  # pragma: no cover (CUDA)
    """On the GPU: the pack check runs there (float64), and captured steps end where eager packed steps end."""
    device = torch.device("cuda")
    model = build(variant).to(device)
    assert pack_declines(model, device) is None
    settings = load_config("EMODB").train
    assert capture_declines(model, settings, device) is None, capture_declines(model, settings, device)


# The paper's ablations, set in the config: the one reference model, built without a part.
ABLATIONS = {
    "w/o BD (forward only)": dict(directions="forward"),
    "w/o DF (levels averaged)": dict(fusion="mean"),
    "w/o MS (last level)": dict(fusion="last"),
    "w/o TAB (no gate)": dict(gate=False),
}


@pytest.mark.slow
@pytest.mark.parametrize("ablation", ABLATIONS)
def test_the_papers_ablations_train_through_every_path_or_decline(ablation):
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=4, levels=3, **ABLATIONS[ablation])).double()
    want = train_alone(copy.deepcopy(model))
    for path, asked in PATHS.items():
        fast = copy.deepcopy(model)
        done, lines = accelerated(fast, asked)
        for g, w in zip(train_alone(fast), want, strict=True):
            torch.testing.assert_close(g, w, **TOLERANCE)
        if ablation.startswith("w/o TAB") and asked.get("kernel"):  # the kernel computes the gated block only
            assert not done.kernel and any("without its gate" in line for line in lines), lines
        else:  # one direction, another fusion: the kernel runs the blocks, the model fuses as it says
            assert not lines and done.kernel == asked.get("kernel", False), (path, lines)
    assert pack_declines(model, torch.device("cpu")) is None
    for g, w in zip(train_packed(copy.deepcopy(model)), want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCE)


def test_ablations_change_only_what_they_name():
    full = TIMNet(model_config())
    names = {n for n, _ in full.named_parameters()}
    forward = {n for n, _ in TIMNet(model_config(directions="forward")).named_parameters()}
    assert forward == {n for n in names if not n.startswith(("backward_in", "backward_blocks"))}
    assert {n for n, _ in TIMNet(model_config(fusion="mean")).named_parameters()} == names - {"level_weights"}
    assert {n for n, _ in TIMNet(model_config(gate=False)).named_parameters()} == names
    with pytest.raises(Exception, match=r"model\.fusion: must be one of dynamic, mean, last \(got 'sum'\)"):
        model_config(fusion="sum")


@pytest.mark.slow
@pytest.mark.parametrize("setting", ["model.directions=forward", "model.fusion=last", "model.gate=false"])
def test_an_ablation_set_on_the_command_line_trains_saves_and_loads(tmp_path, mfcc, setting):
    from conftest import train

    import timnet

    key, value = setting.split("=")
    run = train(tmp_path, mfcc, folds=2, epochs=2, settings={key: value})
    loaded = timnet.load_model(run.run_id, models_root=tmp_path / "Models", engine="torch", device="cpu")
    assert str(getattr(loaded.config.model, key.split(".")[1])).lower() == value
    for model in loaded.fold_models.values():
        assert str(getattr(model.config, key.split(".")[1])).lower() == value
    probs = loaded.predict_proba(torch.randn(3, 32, 39).numpy())
    assert probs.shape == (3, 7) and torch.allclose(torch.as_tensor(probs).sum(-1).double(), torch.ones(3).double())


def test_a_parameter_the_model_does_not_use_is_left_alone_packed_as_alone():
    """torch's Adam skips a parameter without a gradient; the packed optimiser does too (it once crashed)."""
    model = build("reference")
    model.spare = nn.Parameter(torch.ones(3, dtype=torch.float64))  # registered, never used in forward
    want = train_alone(copy.deepcopy(model))
    packed = copy.deepcopy(model)
    for g, w in zip(train_packed(packed), want, strict=True):
        torch.testing.assert_close(g, w, **TOLERANCE)
    assert torch.equal(packed.spare, torch.ones(3, dtype=torch.float64))  # untouched, as torch's Adam leaves it


@pytest.mark.slow
def test_a_worker_process_prints_the_decline_as_the_cli_does(tmp_path, mfcc):
    """The CPU kernel declines a gateless block inside the pool's worker processes: the user sees the same one line
    (`warning: timnet: …`), not Python's `file:line: FastPathDeclined: …`."""
    from conftest import SHORT

    argv = [sys.executable, "-m", "timnet.cli", "train", "--dataset", "EMODB", "--mfcc", str(mfcc), "--quiet"]
    argv += ["--folds", "2", "--epochs", "1", "--workers", "2", "--threads", "1", "--device", "cpu"]
    for key, value in {**SHORT, "model.gate": "false", "train.kernel": "on"}.items():
        argv += ["--set", f"{key}={value}"]
    done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    declines = [line for line in done.stderr.splitlines() if "the CPU kernel steps aside" in line]
    assert declines and all(line.startswith("warning: timnet: the CPU kernel steps aside") for line in declines)
    assert "FastPathDeclined" not in done.stderr
