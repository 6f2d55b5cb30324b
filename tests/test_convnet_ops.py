"""cuda-convnet ops against hand-written loop references (float64, small sizes)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from localconv.nn import LocallyConnected2d
from localconv.nn.convnet_ops import (ConvInput, ConvNetConv, ConvNetFC, ConvNetLocal, EltwiseMax, EltwiseSum,
                                      FlatSoftmax, convnet_output_size)
from localconv.nn.neurons import NEURON_PARAMS, make_neuron
from localconv.nn.norm import ContrastNorm, CrossMapNorm, ResponseNorm
from localconv.nn.pool import ConvNetPool, pool_output_size

torch.set_default_dtype(torch.float32)


# ---------------------------------------------------------------------------------------------
# loop references: positions outside the image read zero (conv) or are skipped (pool, norms)

def ref_conv(x: np.ndarray, w: np.ndarray, pad: int, stride: int, out: int, groups: int = 1) -> np.ndarray:
    """x [N, C, H, W], w [O, C/groups, k, k] -> [N, O, out, out]; window i starts at i*stride - pad."""
    n, c, h, _ = x.shape
    o, cg, k, _ = w.shape
    y = np.zeros((n, o, out, out))
    for f in range(o):
        g = f // (o // groups)
        for i in range(out):
            for j in range(out):
                for u in range(k):
                    for v in range(k):
                        r, s = i * stride - pad + u, j * stride - pad + v
                        if 0 <= r < h and 0 <= s < h:
                            y[:, f, i, j] += x[:, g * cg:(g + 1) * cg, r, s] @ w[f, :, u, v]
    return y


def ref_local(x: np.ndarray, w: np.ndarray, pad: int, stride: int, groups: int = 1) -> np.ndarray:
    """x [N, C, H, W], w [out, out, O, C/groups, k, k] -> [N, O, out, out]."""
    n, _, h, _ = x.shape
    out, _, o, cg, k, _ = w.shape
    y = np.zeros((n, o, out, out))
    for f in range(o):
        g = f // (o // groups)
        for i in range(out):
            for j in range(out):
                for u in range(k):
                    for v in range(k):
                        r, s = i * stride - pad + u, j * stride - pad + v
                        if 0 <= r < h and 0 <= s < h:
                            y[:, f, i, j] += x[:, g * cg:(g + 1) * cg, r, s] @ w[i, j, f, :, u, v]
    return y


def ref_pool(x: np.ndarray, mode: str, size: int, stride: int, start: int, out: int) -> np.ndarray:
    n, c, h, _ = x.shape
    y = np.zeros((n, c, out, out))
    for i in range(out):
        for j in range(out):
            r0, s0 = start + i * stride, start + j * stride
            win = x[:, :, max(r0, 0):min(r0 + size, h), max(s0, 0):min(s0 + size, h)]
            y[:, :, i, j] = win.max(axis=(2, 3)) if mode == "max" else win.mean(axis=(2, 3))
    return y


def ref_cmrnorm(x: np.ndarray, size: int, scale: float, power: float, blocked: bool = False) -> np.ndarray:
    c = x.shape[1]
    y = np.empty_like(x)
    for f in range(c):
        lo = (f // size) * size if blocked else f - size // 2
        window = x[:, max(lo, 0):min(lo + size, c)]
        y[:, f] = x[:, f] / (1 + scale / size * (window ** 2).sum(axis=1)) ** power
    return y


def _window(a: np.ndarray, i: int, j: int, size: int) -> np.ndarray:
    h, r, s = a.shape[2], i - size // 2, j - size // 2
    return a[:, :, max(r, 0):min(r + size, h), max(s, 0):min(s + size, h)]


def ref_spatial_norm(x: np.ndarray, size: int, scale: float, power: float, contrast: bool) -> np.ndarray:
    """rnorm; cnorm as cuda-convnet: each pixel minus the mean of its own window ("meanDiffs"), then
    the same windowed sum of squares of those differences; the numerator stays x."""
    h = x.shape[2]
    diffs = x
    if contrast:
        diffs = np.empty_like(x)
        for i in range(h):
            for j in range(h):
                diffs[:, :, i, j] = x[:, :, i, j] - _window(x, i, j, size).mean(axis=(2, 3))
    y = np.empty_like(x)
    for i in range(h):
        for j in range(h):
            sq = (_window(diffs, i, j, size) ** 2).sum(axis=(2, 3))
            y[:, :, i, j] = x[:, :, i, j] / (1 + scale / size ** 2 * sq) ** power
    return y


def run(module: torch.nn.Module, *xs: np.ndarray) -> np.ndarray:
    module = module.double()
    return module(*[torch.from_numpy(x) for x in xs]).detach().numpy()


rng = np.random.default_rng(0)


# ---------------------------------------------------------------------------------------------
# output sizes

@pytest.mark.parametrize("img,k,pad,stride,expected", [
    (24, 5, 2, 1, 24), (6, 3, 1, 1, 6), (7, 3, 0, 2, 3), (8, 3, 0, 2, 4), (8, 4, 1, 3, 3), (5, 5, 0, 1, 1)])
def test_convnet_output_size_is_ceil(img: int, k: int, pad: int, stride: int, expected: int) -> None:
    assert convnet_output_size(img, k, pad, stride) == expected
    assert expected == 1 + math.ceil((2 * pad + img - k) / stride)


@pytest.mark.parametrize("img,size,stride,start,expected", [(24, 3, 2, 0, 12), (12, 3, 2, 0, 6), (32, 3, 2, 0, 16),
                                                           (8, 3, 2, 0, 4), (7, 2, 2, -1, 4)])
def test_pool_output_size(img: int, size: int, stride: int, start: int, expected: int) -> None:
    assert pool_output_size(img, size, stride, start) == expected


# ---------------------------------------------------------------------------------------------
# conv

def test_conv_stride2_last_window_hangs_over_and_reads_zeros() -> None:
    # 8 + 0 - 3 = 5 is not a multiple of 2: cuda-convnet makes 4 windows, the last reads one zero column.
    x = rng.standard_normal((2, 3, 8, 8))
    conv = ConvNetConv([ConvInput(3, 8, 3, padding=0, stride=2, init_w=0.5)], 4, init_b=0.25)
    assert conv.output_size == 4
    w = conv.weight.detach().double().numpy()
    np.testing.assert_allclose(run(conv, x), ref_conv(x, w, 0, 2, 4) + 0.25, rtol=1e-10, atol=1e-10)


def test_conv_padding_and_untied_bias() -> None:
    x = rng.standard_normal((2, 4, 7, 7))
    conv = ConvNetConv([ConvInput(4, 7, 4, padding=1, stride=3, init_w=0.3)], 6, shared_biases=False)
    assert conv.output_size == 3 and tuple(conv.bias.shape) == (6, 3, 3)
    with torch.no_grad():
        conv.bias.normal_()
    w, b = conv.weight.detach().double().numpy(), conv.bias.detach().double().numpy()
    np.testing.assert_allclose(run(conv, x), ref_conv(x, w, 1, 3, 3) + b, rtol=1e-10, atol=1e-10)


def test_grouped_conv() -> None:
    x = rng.standard_normal((2, 8, 6, 6))
    conv = ConvNetConv([ConvInput(8, 6, 3, padding=1, groups=2, init_w=0.2)], 6)
    assert tuple(conv.weight.shape) == (6, 4, 3, 3)
    w = conv.weight.detach().double().numpy()
    np.testing.assert_allclose(run(conv, x), ref_conv(x, w, 1, 1, 6, groups=2), rtol=1e-10, atol=1e-10)


def test_rand_sparse_conv_reads_its_fixed_random_maps() -> None:
    torch.manual_seed(3)
    inp = ConvInput(8, 5, 3, padding=1, groups=4, filter_channels=4, rand_sparse=True, init_w=0.2)
    conv = ConvNetConv([inp], 8)
    conns = conv.conns
    assert "conns" in conv.state_dict() and conns.shape == (16,)
    # groups*filter_channels / channels = 2 permutations: every map is wired exactly twice
    assert sorted(conns.tolist()) == sorted(list(range(8)) * 2)
    x = rng.standard_normal((2, 8, 5, 5))
    w = conv.weight.detach().double().numpy()
    expected = ref_conv(x[:, conns.numpy()], w, 1, 1, 5, groups=4)
    np.testing.assert_allclose(run(conv, x), expected, rtol=1e-10, atol=1e-10)
    # the wiring is part of the state: a new layer loading it computes the same function
    other = ConvNetConv([inp], 8)
    other.load_state_dict(conv.state_dict())
    np.testing.assert_allclose(run(other, x), expected, rtol=1e-10, atol=1e-10)


def test_multi_input_conv_sums_inputs_before_one_bias() -> None:
    a, b = rng.standard_normal((2, 3, 6, 6)), rng.standard_normal((2, 4, 12, 12))
    conv = ConvNetConv([ConvInput(3, 6, 3, padding=1, init_w=0.1), ConvInput(4, 12, 4, padding=1, stride=2)], 5,
                       init_b=1.5)
    assert [n for n, _ in conv.named_parameters()] == ["weight", "weight_1", "bias"]
    w0, w1 = conv.weight.detach().double().numpy(), conv.weight_1.detach().double().numpy()
    expected = ref_conv(a, w0, 1, 1, 6) + ref_conv(b, w1, 1, 2, 6) + 1.5
    np.testing.assert_allclose(run(conv, a, b), expected, rtol=1e-10, atol=1e-10)


def test_conv_rejects_inconsistent_inputs() -> None:
    with pytest.raises(ValueError, match="same output size"):
        ConvNetConv([ConvInput(3, 6, 3, padding=1), ConvInput(3, 8, 3, padding=1)], 4)
    with pytest.raises(ValueError, match="groups"):
        ConvNetConv([ConvInput(6, 6, 3, groups=4)], 8)
    with pytest.raises(ValueError, match="exceeds"):
        ConvNetConv([ConvInput(3, 4, 7)], 4)


def test_init_is_initw_times_standard_normal_and_constant_bias() -> None:
    torch.manual_seed(0)
    conv = ConvNetConv([ConvInput(64, 12, 5, padding=2, init_w=0.01)], 64, init_b=0.1)
    assert abs(conv.weight.std().item() - 0.01) < 0.0003
    assert conv.weight.abs().max().item() > 3.5 * 0.01  # not truncated at 2 std
    assert torch.all(conv.bias == 0.1)


# ---------------------------------------------------------------------------------------------
# local

def test_local_matches_reference_with_ceil_overhang() -> None:
    x = rng.standard_normal((2, 3, 8, 8))
    local = ConvNetLocal([ConvInput(3, 8, 3, padding=0, stride=2, init_w=0.5)], 4, init_b=0.5)
    assert isinstance(local, LocallyConnected2d)
    assert tuple(local.weight.shape) == (4, 4, 4, 3, 3, 3) and tuple(local.bias.shape) == (4, 4, 4)
    w = local.weight.detach().double().numpy()
    np.testing.assert_allclose(run(local, x), ref_local(x, w, 0, 2) + 0.5, rtol=1e-10, atol=1e-10)


def test_local_padding_like_cc11pct_local3() -> None:
    x = rng.standard_normal((2, 8, 6, 6))
    local = ConvNetLocal([ConvInput(8, 6, 3, padding=1, init_w=0.04)], 4)
    with torch.no_grad():
        local.bias.normal_()
    w, b = local.weight.detach().double().numpy(), local.bias.detach().double().numpy()
    np.testing.assert_allclose(run(local, x), ref_local(x, w, 1, 1) + b, rtol=1e-10, atol=1e-10)


def test_grouped_and_sparse_multi_input_local() -> None:
    torch.manual_seed(1)
    a, b = rng.standard_normal((2, 8, 5, 5)), rng.standard_normal((2, 4, 5, 5))
    local = ConvNetLocal([ConvInput(8, 5, 3, padding=1, groups=2, init_w=0.2),
                          ConvInput(4, 5, 3, padding=1, groups=2, filter_channels=2, rand_sparse=True, init_w=0.2)],
                         6)
    w0, w1 = local.weight.detach().double().numpy(), local.weight_1.detach().double().numpy()
    conns = local.conns_1.numpy()
    expected = ref_local(a, w0, 1, 1, groups=2) + ref_local(b[:, conns], w1, 1, 1, groups=2)
    np.testing.assert_allclose(run(local, a, b), expected, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# fc, eltwise, softmax

def test_fc_multi_input_flattens_and_sums() -> None:
    a, b = rng.standard_normal((3, 2, 2, 2)), rng.standard_normal((3, 5))
    fc = ConvNetFC([8, 5], 4, [0.1, 0.2], init_b=-1.0)
    w0, w1 = fc.weight.detach().double().numpy(), fc.weight_1.detach().double().numpy()
    np.testing.assert_allclose(run(fc, a, b), a.reshape(3, -1) @ w0.T + b @ w1.T - 1.0, rtol=1e-10)
    assert fc.multiply_adds() == 4 * 13


def test_eltwise_and_softmax() -> None:
    a, b = rng.standard_normal((2, 3, 4, 4)), rng.standard_normal((2, 3, 4, 4))
    np.testing.assert_allclose(run(EltwiseSum([0.5, -2.0]), a, b), 0.5 * a - 2.0 * b)
    np.testing.assert_allclose(run(EltwiseMax(), a, b), np.maximum(a, b))
    p = run(FlatSoftmax(), a)
    assert p.shape == (2, 48)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)


# ---------------------------------------------------------------------------------------------
# pooling

def test_pool_3_stride_2_on_24_gives_12_and_clips_the_last_window() -> None:
    x = rng.standard_normal((2, 3, 24, 24))
    for mode in ("max", "avg"):
        pool = ConvNetPool(mode, 3, 2, 24)
        y = run(pool, x)
        assert y.shape == (2, 3, 12, 12)
        np.testing.assert_allclose(y, ref_pool(x, mode, 3, 2, 0, 12), rtol=1e-12)
    # the last avg window covers input rows 22, 23 only: divided by 2*2 in the corner, not by 9
    corner = x[:, :, 22:24, 22:24].mean(axis=(2, 3))
    np.testing.assert_allclose(run(ConvNetPool("avg", 3, 2, 24), x)[:, :, 11, 11], corner)


@pytest.mark.parametrize("img,size,stride,start,outputs", [
    (7, 3, 2, 0, 0), (8, 3, 3, 0, 0), (6, 2, 1, -1, 0), (9, 4, 2, 1, 0), (8, 3, 2, 0, 2), (5, 5, 1, 0, 0),
    (6, 3, 2, -2, 0)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_pool_matches_clipped_window_reference(mode: str, img: int, size: int, stride: int, start: int,
                                               outputs: int) -> None:
    x = rng.standard_normal((2, 2, img, img)) - 3.0  # negative values: padding must never win the max
    pool = ConvNetPool(mode, size, stride, img, start, outputs)
    out = outputs or pool_output_size(img, size, stride, start)
    np.testing.assert_allclose(run(pool, x), ref_pool(x, mode, size, stride, start, out), rtol=1e-12)


def test_pool_rejects_windows_outside_the_image() -> None:
    with pytest.raises(ValueError, match="outside"):
        ConvNetPool("max", 2, 2, 6, start=0, outputs=5)


def test_pool_gradient_flows() -> None:
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    pool = ConvNetPool("avg", 3, 2, 7, start=-1).double()
    assert torch.autograd.gradcheck(pool, (x,))


# ---------------------------------------------------------------------------------------------
# normalization

@pytest.mark.parametrize("size", [1, 2, 3, 4, 9])
def test_cmrnorm_window_is_clipped_at_first_and_last_map(size: int) -> None:
    x = rng.standard_normal((2, 10, 3, 3)) * 3
    np.testing.assert_allclose(run(CrossMapNorm(size, 0.5, 0.75), x), ref_cmrnorm(x, size, 0.5, 0.75), rtol=1e-10)


def test_cmrnorm_size9_window_is_f_minus_4_to_f_plus_4() -> None:
    # 16 maps of ones except map 0 = 3; scale/size = 1, pow = 1: y_f = x_f / (1 + sum of squares in window)
    x = np.ones((1, 16, 1, 1))
    x[0, 0] = 3.0
    y = run(CrossMapNorm(9, 9.0, 1.0), x)[0, :, 0, 0]
    np.testing.assert_allclose(y[0], 3 / (1 + 9 + 4))  # maps 0..4 (window clipped below map 0)
    np.testing.assert_allclose(y[1:5], [1 / (1 + 9 + 5), 1 / (1 + 9 + 6), 1 / (1 + 9 + 7), 1 / (1 + 9 + 8)])
    np.testing.assert_allclose(y[5], 1 / (1 + 9))  # maps 1..9: map 0 is out of the window
    np.testing.assert_allclose(y[15], 1 / (1 + 5))  # maps 11..15 (clipped at the last map)


def test_cmrnorm_blocked() -> None:
    x = rng.standard_normal((2, 10, 2, 2))
    np.testing.assert_allclose(run(CrossMapNorm(4, 0.3, 0.5, blocked=True), x),
                               ref_cmrnorm(x, 4, 0.3, 0.5, blocked=True), rtol=1e-10)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_rnorm_and_cnorm_match_reference(size: int) -> None:
    x = rng.standard_normal((2, 3, 6, 6)) * 2 + 1
    np.testing.assert_allclose(run(ResponseNorm(size, 0.7, 0.75), x),
                               ref_spatial_norm(x, size, 0.7, 0.75, contrast=False), rtol=1e-10)
    np.testing.assert_allclose(run(ContrastNorm(size, 0.7, 0.75), x),
                               ref_spatial_norm(x, size, 0.7, 0.75, contrast=True), rtol=1e-10)


# ---------------------------------------------------------------------------------------------
# neurons

NEURON_CASES = {
    "ident": ([], lambda x: x), "relu": ([], lambda x: np.maximum(x, 0)),
    "logistic": ([], lambda x: 1 / (1 + np.exp(-x))), "abs": ([], np.abs), "square": ([], lambda x: x * x),
    "sqrt": ([], np.sqrt), "softrelu": ([], lambda x: np.log1p(np.exp(x))),
    "tanh": ([1.7, 0.6], lambda x: 1.7 * np.tanh(0.6 * x)),
    "abstanh": ([1.7, -0.6], lambda x: 1.7 * np.abs(np.tanh(-0.6 * x))),
    "linear": ([2.0, -1.0], lambda x: 2 * x - 1), "brelu": ([1.5], lambda x: np.minimum(1.5, np.maximum(0, x))),
}


@pytest.mark.parametrize("kind", sorted(NEURON_PARAMS))
def test_neurons_compute_their_formula(kind: str) -> None:
    params, formula = NEURON_CASES[kind]
    x = rng.standard_normal((4, 5)) * 3
    if kind == "sqrt":
        x = np.abs(x)
    np.testing.assert_allclose(run(make_neuron(kind, params), x), formula(x), rtol=1e-10, atol=1e-12)


def test_neuron_errors() -> None:
    with pytest.raises(ValueError, match="unknown neuron"):
        make_neuron("swish")
    with pytest.raises(ValueError, match="tanh\\[a,b\\]"):
        make_neuron("tanh", [1.0])
