"""Triton backend of local_conv2d against the naive reference and the portable backend.

On a CPU-only machine the kernels run under Triton's interpreter, which must be switched on
(TRITON_INTERPRET=1) before triton compiles anything: ``test_kernels_under_interpreter`` reruns
this module in a subprocess with the variable set, where the other tests run (small shapes).
On a CUDA machine the tests run directly on the GPU. Everything skips cleanly without triton.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from test_local_layer import (
    ODD_CASES,
    SHARED_FILTER_CASES,
    assert_matches_reference,
    check_shared_filter_equals_conv2d,
    make_case,
    naive_local_conv2d,
)

from localconv import LocallyConnected2d
from localconv.nn import functional as local_functional
from localconv.nn.functional import local_conv2d

HAS_TRITON = importlib.util.find_spec("triton") is not None
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
ON_CUDA = torch.cuda.is_available() and not INTERPRETED
DEVICE = "cuda" if ON_CUDA else "cpu"

kernels = pytest.mark.skipif(not HAS_TRITON or not (INTERPRETED or ON_CUDA),
                             reason="needs triton and CUDA, or TRITON_INTERPRET=1 (see the driver test)")


@pytest.mark.slow  # about 20-30 s: a subprocess runs the kernels under the interpreter
@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.skipif(INTERPRETED or torch.cuda.is_available(), reason="the kernels run directly here")
def test_kernels_under_interpreter() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(__file__))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    passed = re.search(r"(\d+) passed", done.stdout)
    assert passed and int(passed.group(1)) >= 10, done.stdout[-2000:]  # the kernel tests really ran


def triton_run(x, w, b, stride, padding):  # noqa: ANN001, ANN201
    args = [t.to(DEVICE) if t is not None else None for t in (x, w, b)]
    return local_conv2d(*args, stride=stride, padding=padding, backend="triton").cpu()


@kernels
@pytest.mark.parametrize("case", ODD_CASES, ids=[c[0] for c in ODD_CASES])
def test_triton_matches_naive_reference(case: tuple) -> None:
    # fp32 with IEEE dots (torch's allow_tf32 is off by default): close to the float64 reference.
    assert_matches_reference(case, triton_run, dtype=torch.float32, atol=2e-5)


@kernels
def test_triton_without_bias() -> None:
    assert_matches_reference(ODD_CASES[1], triton_run, dtype=torch.float32, atol=2e-5, bias=False)


@kernels
@pytest.mark.parametrize("stride,padding,size", SHARED_FILTER_CASES)
def test_triton_shared_filter_equals_conv2d(stride, padding, size) -> None:  # noqa: ANN001
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):  # strict fp32 convolution
        check_shared_filter_equals_conv2d(stride, padding, size, "triton", DEVICE, torch.float32, tol=1e-4)


@kernels
def test_triton_matches_portable_on_channels_last_input() -> None:
    x, weight, b, stride, padding, grad = make_case(ODD_CASES[2], torch.float32)
    x_cl = x.detach().to(DEVICE).to(memory_format=torch.channels_last).requires_grad_()
    w, bias = weight.detach().to(DEVICE).requires_grad_(), b.detach().to(DEVICE).requires_grad_()
    y = local_conv2d(x_cl, w, bias, stride, padding, backend="triton")
    assert y.is_contiguous(memory_format=torch.channels_last)
    got = torch.autograd.grad(y, (x_cl, w, bias), grad.to(DEVICE))
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    y_ref = local_conv2d(x, weight, b, stride, padding, backend="portable")
    want = torch.autograd.grad(y_ref, (x, weight, b), grad)
    torch.testing.assert_close(y.cpu(), y_ref, atol=1e-5, rtol=1e-5)
    for a, r in zip(got, want):
        torch.testing.assert_close(a.cpu(), r, atol=1e-5, rtol=1e-5)


@kernels
def test_triton_float16() -> None:
    x, weight, b, stride, padding, _ = make_case(ODD_CASES[6], torch.float32)
    with torch.no_grad():
        y = local_conv2d(x.half().to(DEVICE), weight.half().to(DEVICE), b.half().to(DEVICE), stride, padding,
                         backend="triton")
        ref = naive_local_conv2d(x.double(), weight.double(), b.double(), stride, padding)
    assert y.dtype == torch.float16
    assert ((y.cpu().double() - ref).norm() / ref.norm()).item() < 2e-3


@kernels
def test_layer_through_triton_and_custom_op_checks() -> None:
    layer = LocallyConnected2d(3, 4, (5, 4), 3, stride=(2, 1), padding=1, backend="triton").to(DEVICE)
    x = torch.randn(2, 3, 5, 4, device=DEVICE, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.shape == x.shape and layer.weight.grad.shape == layer.weight.shape
    # Schema, fake (meta) implementation and dispatch of the ops that torch.compile sees.
    from localconv.nn import local_ops

    w, gy = layer.weight.detach(), torch.randn(2, 4, 3, 4, device=DEVICE)
    spec = ([2, 1], [1, 1, 1, 1], [1, 1], 1)
    utils = ("test_schema", "test_faketensor")
    torch.library.opcheck(local_ops.local_conv_op, (x.detach(), w, layer.bias.detach(), *spec, "triton"),
                          test_utils=utils)
    torch.library.opcheck(local_ops.grad_input_op, (gy, w, [2, 3, 5, 4], *spec, "triton", False), test_utils=utils)
    torch.library.opcheck(local_ops.grad_weight_op, (gy, x.detach(), list(w.shape), *spec, "triton"),
                          test_utils=utils)


@kernels
@pytest.mark.parametrize("groups", [1, 2])
def test_triton_empty_batch(groups: int) -> None:
    # issue 23: N = 0 gives an empty output and zero gradients, as F.conv2d does (no kernel launch)
    layer = LocallyConnected2d(4, 6, (5, 4), 3, padding=1, groups=groups, backend="triton").to(DEVICE)
    x = torch.zeros(0, 4, 5, 4, device=DEVICE, requires_grad=True)
    y = layer(x)
    assert y.shape == (0, 6, 5, 4)
    y.sum().backward()
    assert x.grad.shape == x.shape and not layer.weight.grad.any() and not layer.bias.grad.any()
    assert local_functional.select_backend(x, layer.weight, layer.bias, "triton") == "triton"


# (id, N, C, size, O, kernel, stride, padding pairs, dilation, groups, bias): small, the interpreter is slow
GRADGRAD_CASES = [
    ("2d-strided-dilated-grouped-asym", 1, 2, (3, 4), 2, (2, 2), (2, 1), (0, 1, 1, 0), (1, 2), 2, "untied"),
    ("1d-strided-asym-shared-bias", 2, 1, (5,), 2, (2,), (2,), (1, 2), (1,), 1, "shared"),
]


@kernels
@pytest.mark.skipif(ON_CUDA, reason="float64 runs through the kernels only under the interpreter")
@pytest.mark.parametrize("case", GRADGRAD_CASES, ids=[c[0] for c in GRADGRAD_CASES])
def test_triton_float64_gradcheck_and_gradgradcheck(case: tuple) -> None:
    from local_reference import make_inputs, naive_local_conv

    _, n, c, size, o, kernel, stride, pads, dilation, groups, bias = case
    x, w, b = make_inputs(n, c, size, o, kernel, stride, pads, dilation, groups, bias)

    def fn(x, w, b):  # noqa: ANN001, ANN202
        return local_functional.local_conv(x, w, b, stride, pads, dilation, groups, backend="triton")

    torch.testing.assert_close(fn(x, w, b), naive_local_conv(x, w, b, stride, pads, dilation, groups))
    # fast mode: random projections instead of full numerical Jacobians (each kernel call is interpreted)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


@kernels
def test_triton_under_torch_compile() -> None:
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, 5, 3, padding=1, backend="triton").to(DEVICE)
    x = torch.randn(2, 3, 5, 5, device=DEVICE, requires_grad=True)
    y_ref = layer(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, layer.weight))
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    g = torch.autograd.grad(y.square().sum(), (x, layer.weight))
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


@kernels
def test_auto_selection() -> None:
    x, w = torch.randn(1, 2, 4, 4, device=DEVICE), torch.randn(4, 4, 2, 2, 1, 1, device=DEVICE)
    expected = "triton" if ON_CUDA else "portable"  # auto never picks the interpreter
    assert local_functional.select_backend(x, w, backend="auto") == expected
    with pytest.raises(ValueError, match="float64" if ON_CUDA else "3-D runs on the portable backend"):
        if ON_CUDA:  # float64 goes through the kernels only under the interpreter
            local_functional.select_backend(x.double(), w.double(), backend="triton")
        else:
            local_functional.select_backend(torch.randn(1, 2, 3, 3, 3), torch.randn(3, 3, 3, 2, 2, 1, 1, 1),
                                            backend="triton")
