"""The CPU float32 forward as oneDNN grouped 1x1 convolutions (local_onednn) against the naive reference and
against the portable forward (oneDNN switched off), over the geometries the layers accept."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from local_reference import make_inputs, naive_local_conv

from localconv import LocallyConnected2d
from localconv.nn import local_onednn, local_portable
from localconv.nn.functional import local_conv

pytestmark = [pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN"),
              # torch.backends.mkldnn.flags() also sets oneDNN's TF32 flag and warns about Intel GPUs
              pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")]

# (id, N, C, size, O, kernel, stride, pads (before, after per dim), dilation, groups, bias)
CASES = [
    ("1d", 3, 4, (9,), 5, (3,), (1,), (1, 1), (1,), 1, "untied"),
    ("1d-stride2-dilation2-shared", 2, 3, (11,), 4, (3,), (2,), (2, 0), (2,), 1, "shared"),
    ("2d-cc11pct-like", 4, 8, (6, 6), 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "untied"),
    ("2d-groups-no-bias", 2, 6, (5, 7), 4, (3, 2), (1, 2), (1, 2, 0, 1), (1, 1), 2, None),
    ("2d-over-padding", 2, 3, (4, 4), 3, (3, 3), (1, 1), (4, 3, 0, 5), (1, 1), 1, "shared"),
    ("2d-dilation", 2, 4, (8, 7), 3, (2, 3), (2, 1), (0, 1, 2, 2), (3, 2), 1, "untied"),
    ("3d-groups", 2, 4, (4, 5, 3), 6, (2, 3, 2), (1, 2, 1), (1, 0, 1, 1, 0, 1), (1, 1, 1), 2, "untied"),
]


def _run(case: tuple, channels_last: bool = False, seed: int = 0):  # noqa: ANN202
    _, n, c, size, o, kernel, stride, pads, dilation, groups, bias = case
    x, w, b = make_inputs(n, c, size, o, kernel, stride, pads, dilation, groups, bias, torch.float32, seed)
    x, w = x.detach(), w.detach()
    b = b.detach() if b is not None else None
    if channels_last:
        x = x.to(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    args = (stride, list(pads), dilation, groups)
    return x, w, b, args


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_onednn_forward_equals_the_reference_and_the_portable_forward(case: tuple) -> None:
    x, w, b, (stride, pads, dilation, groups) = _run(case)
    assert local_onednn.usable(x)
    got = local_conv(x, w, b, stride, pads, dilation, groups, backend="portable")
    with torch.backends.mkldnn.flags(enabled=False):
        assert not local_onednn.usable(x)
        portable = local_conv(x, w, b, stride, pads, dilation, groups, backend="portable")
    want = naive_local_conv(x.double(), w.double(), None if b is None else b.double(), stride, tuple(pads),
                            dilation, groups)
    assert got.dtype == torch.float32 and got.shape == want.shape
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, portable, rtol=1e-5, atol=1e-5)


def test_the_cpu_float32_forward_is_served_by_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    # a test of the dispatch: without it the faster path could silently stop being used
    calls = []
    real = local_onednn.forward
    monkeypatch.setattr(local_onednn, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    layer = LocallyConnected2d(3, 4, 5, 3, padding=1)
    layer(torch.randn(2, 3, 5, 5))
    assert calls == [1]
    layer.double()(torch.randn(2, 3, 5, 5, dtype=torch.float64))  # float64: the portable forward
    assert calls == [1]


@pytest.mark.parametrize("case", [CASES[2], CASES[6]], ids=["2d", "3d"])
def test_channels_last_input_gives_a_channels_last_output_with_the_same_values(case: tuple) -> None:
    x, w, b, (stride, pads, dilation, groups) = _run(case)
    xl, *_ = _run(case, channels_last=True)
    plain = local_conv(x, w, b, stride, pads, dilation, groups)
    last = local_conv(xl, w, b, stride, pads, dilation, groups)
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    assert last.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(last, plain, rtol=1e-6, atol=1e-6)


def test_many_row_chunks_give_the_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    case = ("2d", 3, 4, (9, 8), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1, "untied")
    x, w, b, (stride, pads, dilation, groups) = _run(case)
    whole = local_conv(x, w, b, stride, pads, dilation, groups)
    monkeypatch.setattr(local_onednn, "CPU_CHUNK_BYTES", 1)  # one output row per chunk
    gemms = []
    real = local_onednn._grouped_1x1
    monkeypatch.setattr(local_onednn, "_grouped_1x1", lambda *a: gemms.append(1) or real(*a))
    chunked = local_conv(x, w, b, stride, pads, dilation, groups)
    assert len(gemms) == 9  # the 9 output rows
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6)


def test_without_the_in_place_op_the_plain_convolution_serves(monkeypatch: pytest.MonkeyPatch) -> None:
    x, w, b, (stride, pads, dilation, groups) = _run(CASES[3])
    with_op = local_conv(x, w, b, stride, pads, dilation, groups)
    monkeypatch.setattr(local_onednn, "_conv_add_op", lambda: None)
    without = local_conv(x, w, b, stride, pads, dilation, groups)
    torch.testing.assert_close(without, with_op, rtol=1e-6, atol=1e-6)


def test_empty_batch_and_backward_and_autocast() -> None:
    x, w, b, (stride, pads, dilation, groups) = _run(CASES[2])
    empty = local_conv(x[:0], w, b, stride, pads, dilation, groups)
    assert empty.shape == (0, *local_conv(x, w, b, stride, pads, dilation, groups).shape[1:])
    # the backward (portable) after a oneDNN forward: gradients equal the reference's
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    y = local_conv(xg, wg, bg, stride, pads, dilation, groups)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (xg, wg, bg), grad)
    xd, wd, bd = (t.double().requires_grad_() for t in (x, w, b))
    want = torch.autograd.grad(naive_local_conv(xd, wd, bd, stride, tuple(pads), dilation, groups),
                               (xd, wd, bd), grad.double())
    for g, r in zip(got, want):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-4)
    # under CPU autocast the op runs in bfloat16, the portable forward's dtype (this path is float32 only)
    plain = local_conv(x, w, b, stride, pads, dilation, groups)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = local_conv(x, w, b, stride, pads, dilation, groups)
    assert auto.dtype == torch.bfloat16
    torch.testing.assert_close(auto.float(), plain, rtol=0.05, atol=0.3)


def test_a_taps_last_weight_gives_the_same_result() -> None:
    x, w, b, (stride, pads, dilation, groups) = _run(CASES[2])
    taps_last = local_portable.taps_last_weight(w, 2)
    assert not taps_last.is_contiguous() and torch.equal(taps_last, w)
    torch.testing.assert_close(local_conv(x, taps_last, b, stride, pads, dilation, groups),
                               local_conv(x, w, b, stride, pads, dilation, groups), rtol=1e-6, atol=1e-6)


def test_the_private_op_is_checked_before_use() -> None:
    """torch.ops.mkldnn._convolution_pointwise_ is private: a torch whose op raises on our call or computes
    something else must get the plain convolution, not a crash or a wrong output."""
    real = torch.ops.mkldnn._convolution_pointwise_.binary

    def wrong_schema(*args):  # noqa: ANN002, ANN202
        raise TypeError("_convolution_pointwise_() got an unexpected argument")

    def does_nothing(other, *args):  # noqa: ANN001, ANN002, ANN202
        return other

    def overwrites(other, inp, weight, *args):  # noqa: ANN001, ANN002, ANN202
        return other.copy_(real(torch.zeros_like(other), inp, weight, *args))  # conv, without the add

    assert local_onednn.checked_conv_add(wrong_schema) is None
    assert local_onednn.checked_conv_add(does_nothing) is None
    assert local_onednn.checked_conv_add(overwrites) is None
    # the real op passes whatever torch's defaults and autocast state at the first call
    default = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert local_onednn.checked_conv_add(real) is real
    finally:
        torch.set_default_dtype(default)


def test_the_backward_probe_computes_the_layers_gradients() -> None:
    """benchmarks/onednn_backward_probe.py times a oneDNN backward against the portable one: both must be the
    layer's gradients, or its ratio means nothing."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "onednn_backward_probe.py"
    spec = importlib.util.spec_from_file_location("onednn_backward_probe", path)
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    n, o, c, s, k = 3, 5, probe.CHANNELS, probe.SIDE, probe.KERNEL
    x, w = torch.randn(n, c, s, s, dtype=torch.float64), torch.randn(s, s, o, c, k, k, dtype=torch.float64)
    grad = torch.randn(n, o, s, s, dtype=torch.float64)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    want = torch.autograd.grad(naive_local_conv(xg, wg, None, (1, 1), (1, 1, 1, 1), (1, 1), 1), (xg, wg), grad)
    for backward in (probe.OneDnnBackward(n, o), probe.portable_backward(n, o)):
        got = backward(grad.float(), x.float(), w.float())
        for g, wnt in zip(got, want):
            torch.testing.assert_close(g.double(), wnt, rtol=1e-4, atol=1e-4)


def test_the_first_use_may_be_under_vmap_grad_or_inference_mode() -> None:
    """The check of the op runs on the first oneDNN forward of the process, whatever transform that is under."""
    code = textwrap.dedent("""
        import torch
        from localconv.nn import local_onednn
        from localconv.nn.functional import local_conv
        torch.manual_seed(0)
        x, w = torch.randn(4, 3, 5, 5), torch.randn(3, 3, 2, 3, 3, 3)
        ref = torch.stack([local_conv(xi[None], w, None, 1, 0)[0] for xi in x])  # with the check below reset
        for first_use in ("vmap", "grad", "inference"):
            local_onednn._conv_add_op.cache_clear()
            if first_use == "vmap":
                got = torch.func.vmap(lambda xi: local_conv(xi[None], w, None, 1, 0)[0])(x)
            elif first_use == "grad":
                got = torch.func.grad(lambda wi: local_conv(x, wi, None, 1, 0).sum())(w)
            else:
                with torch.inference_mode():
                    got = local_conv(x, w, None, 1, 0)
            assert local_onednn._conv_add_op.cache_info().currsize == 1, first_use  # checked by that call
            assert local_onednn._conv_add_op() is torch.ops.mkldnn._convolution_pointwise_.binary, first_use
            if first_use == "grad":
                wg = w.clone().requires_grad_()
                torch.testing.assert_close(got, torch.autograd.grad(local_conv(x, wg, None, 1, 0).sum(), wg)[0])
            else:
                torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
