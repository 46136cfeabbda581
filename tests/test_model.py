"""TIM-Net structure: Keras parameter counts, shapes, causality, Keras-like initialisation."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import model_config
from torch import nn

from timnet import load_config
from timnet.core.config import known_datasets
from timnet.model.network import TIMNet, TIMNetConfig, count_parameters
from timnet.serving.onnx_export import absorb_batchnorm


@pytest.mark.parametrize("name", known_datasets())
def test_parameter_count_equals_keras_for_every_config(name):
    cfg = TIMNetConfig.from_config(load_config(name))
    total, trainable = count_parameters(TIMNet(cfg))
    # Keras: 2 input 1x1 convs + 2 x levels TABs (2 convs + 2 BNs each) + level weights + dense
    tab = 2 * (cfg.filters * cfg.filters * cfg.kernel_size + cfg.filters) + 2 * 4 * cfg.filters
    expected = (
        2 * (cfg.n_mfcc * cfg.filters + cfg.filters)
        + 2 * cfg.levels * tab
        + cfg.levels
        + cfg.filters * cfg.n_classes
        + cfg.n_classes
    )
    assert total == expected
    assert trainable == total - 2 * cfg.levels * 2 * 2 * cfg.filters  # BN moving mean/var are not trainable


def test_published_parameter_counts():
    assert count_parameters(TIMNet(model_config())) == (106_992, 104_496)  # EMODB
    assert count_parameters(TIMNet(model_config(n_classes=4, levels=10)))[0] == 132_770  # IEMOCAP


def test_shapes_and_embedding():
    model = TIMNet(model_config()).eval()
    x = torch.randn(3, 188, 39)
    assert model(x).shape == (3, 7)
    assert model.levels(x).shape == (3, 39, 8)
    emb = model.embed(x)
    assert emb.shape == (3, 39)
    torch.testing.assert_close(model.classifier(emb), model(x))


def test_causal_convolution_never_looks_ahead():
    torch.manual_seed(0)
    block = TIMNet(model_config()).eval().forward_blocks
    x = torch.randn(1, 100, 39)  # channels last [B, T, C]
    y = x.clone()
    y[:, 60:] = torch.randn(1, 40, 39)  # change only the future
    a, b = x, y
    for blk in block:
        a, b = blk(a), blk(b)
    torch.testing.assert_close(a[:, :60], b[:, :60])
    assert not torch.allclose(a[:, 60:], b[:, 60:])


def test_backward_direction_sees_reversed_time():
    torch.manual_seed(0)
    model = TIMNet(model_config(n_classes=3)).eval()
    x = torch.randn(2, 50, 39)
    assert not torch.allclose(model(x), model(x.flip(1)), atol=1e-4)  # order matters
    # The backward stream is the forward one run on reversed time: swapping the two streams' weights and reversing
    # the input gives the same output. A model whose second stream saw x unreversed (or that had one stream) fails.
    swapped = copy.deepcopy(model)
    swapped.forward_in, swapped.backward_in = swapped.backward_in, swapped.forward_in
    swapped.forward_blocks, swapped.backward_blocks = swapped.backward_blocks, swapped.forward_blocks
    torch.testing.assert_close(swapped(x.flip(1)), model(x), rtol=1e-5, atol=1e-5)


def test_keras_like_initialisation_and_batchnorm():
    torch.manual_seed(0)
    model = TIMNet(model_config())
    bn = model.forward_blocks[0].bn1
    assert bn.eps == 1e-3 and bn.momentum == pytest.approx(0.01)  # Keras momentum 0.99
    assert model.level_weights.abs().max() <= 0.05
    conv = model.forward_blocks[3].conv1
    limit = (6 / (39 * 2 + 39 * 2)) ** 0.5  # Glorot uniform: fan_in = fan_out = 39 * kernel 2
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.9 * limit
    assert not conv.bias.any() and not model.classifier.bias.any()
    assert model.forward_blocks[1].conv1.dilation == (2,) and model.forward_blocks[7].conv2.dilation == (128,)


def test_folded_batchnorm_equals_the_model_in_eval_mode():
    """Export folds each BatchNorm into its conv; with non-trivial statistics the outputs stay equal."""
    torch.manual_seed(0)
    model = TIMNet(model_config(levels=3)).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm1d)):
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        nn.init.normal_(bn.weight)
        nn.init.normal_(bn.bias)
    folded = absorb_batchnorm(model)
    x = torch.randn(4, 50, 39)
    with torch.no_grad():
        torch.testing.assert_close(folded.embed(x), model.embed(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules()), "the model itself is left alone"
