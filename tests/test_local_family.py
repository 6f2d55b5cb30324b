"""LocallyConnected1d/2d/3d and their Lazy variants: nn.ConvNd semantics, keywords, errors."""
from __future__ import annotations

import io
import math
import re

import pytest
import torch
import torch.nn.functional as F
from local_reference import naive_local_conv
from torch import nn

from localconv import (
    LazyLocallyConnected1d,
    LazyLocallyConnected2d,
    LazyLocallyConnected3d,
    LocallyConnected1d,
    LocallyConnected2d,
    LocallyConnected3d,
)

LAYERS = {1: LocallyConnected1d, 2: LocallyConnected2d, 3: LocallyConnected3d}
CONVS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}

# (dims, input size, kernel, stride, padding, dilation, groups)
SHARED = [
    (1, (9,), 3, 2, 1, 1, 1),
    (1, (8,), 3, 1, "same", 2, 2),
    (2, (7, 6), (3, 2), (2, 1), (1, 0), (1, 2), 2),
    (2, (6, 6), 3, 1, "same", 1, 1),
    (3, (4, 5, 4), (2, 3, 2), (1, 2, 1), (1, 0, 1), (2, 1, 1), 2),
    (3, (4, 4, 4), 3, 1, "valid", 1, 1),
]


@pytest.mark.parametrize("case", SHARED, ids=[f"{c[0]}d-{i}" for i, c in enumerate(SHARED)])
def test_shared_filters_equal_conv_nd(case: tuple) -> None:
    # Every position holding the same filter bank must give F.convNd with the same keywords.
    dims, size, kernel, stride, padding, dilation, groups = case
    torch.manual_seed(0)
    layer = LAYERS[dims](4, 6, size, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         dtype=torch.float64)
    conv_w = torch.randn(6, 4 // groups, *layer.kernel_size, dtype=torch.float64)
    conv_b = torch.randn(6, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(conv_w.expand(*layer.output_size, *conv_w.shape))
        layer.bias.copy_(conv_b.view(6, *[1] * dims).expand_as(layer.bias))
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    want = CONVS[dims](x, conv_w, conv_b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    torch.testing.assert_close(layer(x), want)
    if padding == "same":
        assert tuple(want.shape[2:]) == tuple(size) == layer.output_size


@pytest.mark.parametrize("dims", [1, 3])
def test_layer_matches_naive_reference_and_unbatched_input(dims: int) -> None:
    torch.manual_seed(0)
    size = (7,) if dims == 1 else (4, 5, 3)
    layer = LAYERS[dims](3, 2, size, 2, stride=2 if dims == 1 else (1, 2, 1), padding=1, dtype=torch.float64)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    want = naive_local_conv(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer(x[1]), want[1])  # unbatched [C, *S] -> [O, *out]
    assert layer.weight.shape == (*layer.output_size, 2, 3, *layer.kernel_size)
    assert layer.bias.shape == (2, *layer.output_size)


def test_shared_bias_and_groups_layout() -> None:
    layer = LocallyConnected2d(4, 6, 5, 3, padding=1, groups=2, shared_bias=True)
    assert layer.weight.shape == (5, 5, 6, 2, 3, 3) and layer.bias.shape == (6,)
    assert layer.fan_in == 2 * 9 and layer.init_std == pytest.approx(1 / math.sqrt(18))
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    layer(x).sum().backward()
    assert layer.bias.grad.shape == (6,)
    torch.testing.assert_close(layer.bias.grad, torch.full((6,), 2.0 * 25))
    assert "groups=2" in repr(layer) and "shared_bias=True" in repr(layer)


def test_device_dtype_keywords_and_state_dict() -> None:
    layer = LocallyConnected1d(2, 3, 8, 3, device="cpu", dtype=torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.bias.dtype == torch.float64
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = LocallyConnected1d(2, 3, 8, 3, dtype=torch.float64)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(4, 2, 8, dtype=torch.float64)
    torch.testing.assert_close(other(x), layer(x))


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_lazy_layers_infer_channels_and_size(dims: int) -> None:
    lazy_cls = {1: LazyLocallyConnected1d, 2: LazyLocallyConnected2d, 3: LazyLocallyConnected3d}[dims]
    size = (9, 8, 7)[:dims]
    lazy = lazy_cls(5, 3, padding="same", dtype=torch.float64)
    assert lazy.has_uninitialized_params()
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    y = lazy(x)
    assert type(lazy) is LAYERS[dims]
    assert lazy.in_channels == 4 and lazy.input_size == size and y.shape == (2, 5, *size)
    assert lazy.weight.shape == (*size, 5, 4, *(3,) * dims) and lazy.weight.dtype == torch.float64
    assert lazy.init_std == pytest.approx(1 / math.sqrt(4 * 3**dims))
    assert lazy.weight.std().item() == pytest.approx(lazy.init_std, rel=0.1)
    eager = LAYERS[dims](4, 5, size, 3, padding="same", dtype=torch.float64)
    eager.load_state_dict(lazy.state_dict())
    torch.testing.assert_close(eager(x), y)


def test_lazy_unbatched_first_input_and_in_sequential() -> None:
    model = nn.Sequential(LazyLocallyConnected2d(3, 2), nn.ReLU(), nn.Flatten(0), nn.LazyLinear(1))
    y = model(torch.randn(2, 6, 6))  # unbatched [C, H, W]
    assert model[0].in_channels == 2 and model[0].input_size == (6, 6) and y.shape == (1,)


BAD = [
    (dict(init_std=-1.0), "init_std must be a finite number >= 0"),
    (dict(init_std=float("nan")), "init_std must be a finite number >= 0"),
    (dict(gain=float("inf")), "gain must be a finite number >= 0"),
    (dict(input_size=6.0), "input_size must be an int"),
    (dict(kernel_size=2.5), "kernel_size must be an int"),
    (dict(kernel_size=0), "kernel_size must be >= 1"),
    (dict(stride=(1, -1)), "stride must be >= 1"),
    (dict(dilation=0), "dilation must be >= 1"),
    (dict(padding=-1), "padding must be >= 0"),
    (dict(padding="full"), "padding must be an int, a tuple, 'valid' or 'same'"),
    (dict(padding="same", stride=2), "padding='same' needs stride 1"),
    (dict(padding=(1, 2, 3)), "padding must be an int or 2 ints"),
    (dict(groups=3), "groups=3 must divide out_channels=4"),
    (dict(groups=0), "groups must be an int >= 1"),
    (dict(in_channels=0), "in_channels must be an int >= 1"),
    (dict(out_channels=2.0), "out_channels must be an int >= 1"),
    (dict(input_size=(6, 0)), "input_size must be >= 1"),
    (dict(input_size=2, kernel_size=5), "leave no output position"),
    (dict(backend="fast"), "unknown backend"),
    (dict(input_size=None), "input_size is required (or use LazyLocallyConnected2d"),
]


@pytest.mark.parametrize("kwargs,message", BAD, ids=[m for _, m in BAD])
def test_bad_arguments_raise_value_error(kwargs: dict, message: str) -> None:
    args = dict(in_channels=4, out_channels=4, input_size=6, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError, match=re.escape(message)):
        LocallyConnected2d(**args)


def test_groups_must_divide_in_channels_and_lazy_checks_input() -> None:
    with pytest.raises(ValueError, match="groups=2 must divide in_channels=3"):
        LocallyConnected2d(3, 4, 6, 3, groups=2)
    with pytest.raises(ValueError, match=r"expected input \[N, C, L\] or \[C, L\], got \[2, 3, 4, 5\]"):
        LazyLocallyConnected1d(2, 3)(torch.randn(2, 3, 4, 5))
