"""LocallyConnected2d / local_conv2d (portable backend) against a naive per-position reference."""
from __future__ import annotations

import importlib.util
import io
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from local_reference import make_inputs, naive_local_conv

from localconv import LocallyConnected2d
from localconv.nn import functional as local_functional
from localconv.nn import local_ops, local_portable
from localconv.nn.functional import local_conv, local_conv2d, select_backend
from localconv.nn.utils import _padding4, _pair

REPO = Path(__file__).resolve().parents[1]


def naive_local_conv2d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                       stride: int | tuple[int, int], padding: int | tuple[int, ...]) -> torch.Tensor:
    """Explicit Python loop over output positions: one conv filter bank per position."""
    sh, sw = _pair(stride)
    top, bottom, left, right = _padding4(padding)
    xp = F.pad(x, (left, right, top, bottom))
    oh, ow, o, c, kh, kw = weight.shape
    rows = []
    for i in range(oh):
        cols = []
        for j in range(ow):
            patch = xp[:, :, i * sh:i * sh + kh, j * sw:j * sw + kw]  # [N, C, kh, kw]
            cols.append(torch.einsum("nchw,ochw->no", patch, weight[i, j]))
        rows.append(torch.stack(cols, dim=-1))
    y = torch.stack(rows, dim=-2)  # [N, O, OH, OW]
    return y + bias if bias is not None else y


def out_size(n_in: int, k: int, s: int, before: int, after: int) -> int:
    return (n_in + before + after - k) // s + 1


# (id, N, C, (H, W), O, kernel, stride, padding)
ODD_CASES = [
    ("rect-input-rect-kernel", 2, 3, (7, 6), 5, (3, 2), 1, 1),
    ("stride2-pad0", 2, 2, (7, 7), 3, 3, 2, 0),
    ("stride2x1-pad2", 3, 3, (6, 5), 4, 3, (2, 1), 2),
    ("one-channel-batch1", 1, 1, (5, 5), 1, 3, 1, 1),
    ("asymmetric-padding", 2, 3, (6, 5), 2, 3, 2, (1, 2, 0, 1)),
    ("kernel1x1", 3, 4, (4, 3), 2, 1, 1, 0),
    ("cc11pct-like", 2, 8, (6, 6), 4, 3, 1, 1),
]


def make_case(case: tuple, dtype: torch.dtype = torch.float64, seed: int = 0, bias: bool = True):
    _, n, c, (h, w), o, kernel, stride, padding = case
    (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
    top, bottom, left, right = _padding4(padding)
    oh, ow = out_size(h, kh, sh, top, bottom), out_size(w, kw, sw, left, right)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, h, w, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(oh, ow, o, c, kh, kw, generator=gen, dtype=dtype).requires_grad_()
    b = torch.randn(o, oh, ow, generator=gen, dtype=dtype).requires_grad_() if bias else None
    grad = torch.randn(n, o, oh, ow, generator=gen, dtype=dtype)
    return x, weight, b, stride, padding, grad


def grads(y: torch.Tensor, inputs: list[torch.Tensor | None], grad: torch.Tensor) -> list[torch.Tensor | None]:
    present = [t for t in inputs if t is not None]
    got = iter(torch.autograd.grad(y, present, grad))
    return [next(got) if t is not None else None for t in inputs]


def assert_matches_reference(case: tuple, run, dtype: torch.dtype = torch.float64, atol: float = 1e-10,
                             bias: bool = True) -> None:
    x, weight, b, stride, padding, grad = make_case(case, dtype, bias=bias)
    y = run(x, weight, b, stride, padding)
    got = grads(y, [x, weight, b], grad)
    x64, w64 = x.detach().double().requires_grad_(), weight.detach().double().requires_grad_()
    b64 = b.detach().double().requires_grad_() if b is not None else None
    ref = naive_local_conv2d(x64, w64, b64, stride, padding)
    want = grads(ref, [x64, w64, b64], grad.double())
    assert y.shape == ref.shape
    for name, a, r in [("output", y, ref), ("grad_input", got[0], want[0]), ("grad_weight", got[1], want[1]),
                       ("grad_bias", got[2], want[2])]:
        if r is None:
            assert a is None
            continue
        err = (a.double() - r).abs().max().item()
        assert err <= atol * max(1.0, r.abs().max().item()), f"{name}: max error {err:.3g}"


@pytest.mark.parametrize("case", ODD_CASES, ids=[c[0] for c in ODD_CASES])
def test_portable_matches_naive_reference(case: tuple) -> None:
    assert_matches_reference(case, lambda x, w, b, s, p: local_conv2d(x, w, b, s, p, backend="portable"))


@pytest.mark.parametrize("case", ODD_CASES[:5], ids=[c[0] for c in ODD_CASES[:5]])
def test_portable_row_chunks_match_reference(case: tuple, monkeypatch: pytest.MonkeyPatch) -> None:
    # One output row per chunk exercises the forward's chunk boundaries (the backward has no chunks).
    monkeypatch.setattr(local_portable, "CPU_CHUNK_BYTES", 1)
    assert_matches_reference(case, lambda x, w, b, s, p: local_conv2d(x, w, b, s, p, backend="portable"))


# The portable backward has three strategies, chosen by GEMM size (local_portable._tap_gemms) and
# geometry (local_portable._row_gemms): the input gradient per target row with K = kernel[-1]*O (one group,
# stride and dilation 1 along the last dimension; "rows-slabs" builds its regrouped weight one output row of
# the first dimension at a time), per-tap GEMMs on strided views, or gathered columns. Each is forced here,
# on N-D, strided, dilated, grouped and over-padded cases, with a contiguous and a taps-last weight;
# gradcheck takes the fused first-order backward, gradgradcheck the separate gradients.
# (id, N, C, size, O, kernel, stride, padding pairs, dilation, groups)
STRATEGY_CASES = [
    ("1d-strided-dilated", 2, 2, (9,), 2, (2,), (2,), (0, 2), (3,), 1),
    ("2d-asymmetric", 2, 3, (5, 4), 2, (3, 2), (1, 1), (1, 0, 1, 1), (1, 1), 1),
    ("2d-strided-dilated", 2, 2, (7, 6), 3, (2, 3), (2, 1), (1, 1, 0, 2), (2, 1), 1),
    ("2d-grouped", 2, 4, (4, 5), 4, (2, 2), (1, 2), (0, 1, 1, 0), (1, 1), 2),
    ("3d-dilated-grouped", 1, 4, (4, 3, 4), 2, (2, 1, 2), (1, 1, 2), (1, 0, 0, 0, 0, 1), (2, 1, 1), 2),
    ("1d-padded-past-the-kernel", 2, 2, (5,), 2, (3,), (1,), (3, 4), (1,), 1),
    ("3d-strided", 1, 2, (3, 3, 4), 2, (2, 2, 2), (1, 2, 1), (1, 0, 0, 1, 1, 0), (1, 1, 1), 1),
]
STRATEGIES = {"rows": (0, True, None), "rows-slabs": (0, True, 1), "per-tap": (0, False, None),
              "columns": (1 << 62, False, None)}  # (TAP_GEMM_MIN_MACS, rows allowed, CPU_CHUNK_BYTES)


@pytest.mark.parametrize("strategy", list(STRATEGIES))
@pytest.mark.parametrize("taps_last", [False, True], ids=["contiguous", "taps-last"])
@pytest.mark.parametrize("case", STRATEGY_CASES, ids=[c[0] for c in STRATEGY_CASES])
def test_backward_strategies_gradcheck(case: tuple, taps_last: bool, strategy: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    min_macs, rows, chunk_bytes = STRATEGIES[strategy]
    _, n, c, size, o, kernel, stride, pads, dilation, groups = case
    if rows and not (groups == 1 and stride[-1] == 1 and dilation[-1] == 1):
        pytest.skip("the row strategy needs one group, stride and dilation 1 along the last dimension")
    if chunk_bytes is not None and len(size) == 1:
        pytest.skip("a 1-D layer has one slab")
    monkeypatch.setattr(local_portable, "TAP_GEMM_MIN_MACS", min_macs)
    taken = []  # what the backward chose, each call
    row_gemms = local_portable._row_gemms

    def choose(geo: local_portable.Geometry) -> bool:
        taken.append(row_gemms(geo) and rows)
        return taken[-1]

    monkeypatch.setattr(local_portable, "_row_gemms", choose)
    if chunk_bytes is not None:
        monkeypatch.setattr(local_portable, "CPU_CHUNK_BYTES", chunk_bytes)
    x, w, _ = make_inputs(n, c, size, o, kernel, stride, pads, dilation, groups, bias=None)
    if taps_last:
        w = local_portable.taps_last_weight(w.detach(), len(size)).requires_grad_()

    def fn(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return local_conv(x, w, None, stride, pads, dilation, groups, backend="portable")

    torch.testing.assert_close(fn(x, w), naive_local_conv(x, w, None, stride, pads, dilation, groups),
                               rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, (x, w))
    assert torch.autograd.gradgradcheck(fn, (x, w))
    assert all(t == rows for t in taken) and (taken or not rows)  # the strategy under test ran


def test_float32_without_bias() -> None:
    assert_matches_reference(ODD_CASES[0], lambda x, w, b, s, p: local_conv2d(x, w, b, s, p),
                             dtype=torch.float32, atol=1e-5, bias=False)


def test_mutated_weight_is_detected() -> None:
    # The reference comparison can fail: one changed filter bank changes one output position.
    x, weight, b, stride, padding, _ = make_case(ODD_CASES[0])
    with torch.no_grad():
        y = local_conv2d(x, weight, b, stride, padding)
        weight[1, 2, 0, 0, 0, 0] += 1.0
        ref = naive_local_conv2d(x, weight, b, stride, padding)
    diff = (y - ref).abs() > 1e-6
    assert diff.any() and diff[:, 0, 1, 2].all() and diff.sum() == diff[:, 0, 1, 2].sum()


def check_shared_filter_equals_conv2d(stride, padding, size, backend: str, device: str = "cpu",  # noqa: ANN001
                                      dtype: torch.dtype = torch.float64, tol: float | None = None) -> None:
    """Every position holding the same filter bank (and bias) must give F.conv2d, and its grads."""
    gen = torch.Generator().manual_seed(1)
    conv_w = torch.randn(4, 3, 3, 2, generator=gen, dtype=dtype).to(device).requires_grad_()
    conv_b = torch.randn(4, generator=gen, dtype=dtype).to(device).requires_grad_()
    x = torch.randn(2, 3, *size, generator=gen, dtype=dtype).to(device).requires_grad_()
    y_conv = F.conv2d(x, conv_w, conv_b, stride=stride, padding=padding)
    oh, ow = y_conv.shape[2:]
    local_w = conv_w.detach().expand(oh, ow, *conv_w.shape).contiguous().requires_grad_()
    local_b = conv_b.detach()[:, None, None].expand(4, oh, ow).contiguous().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y_local = local_conv2d(x2, local_w, local_b, stride, padding, backend=backend)
    close = {} if tol is None else {"atol": tol, "rtol": tol}
    torch.testing.assert_close(y_local, y_conv, **close)
    grad = torch.randn_like(y_conv)
    gx_c, gw_c, gb_c = torch.autograd.grad(y_conv, (x, conv_w, conv_b), grad)
    gx_l, gw_l, gb_l = torch.autograd.grad(y_local, (x2, local_w, local_b), grad)
    torch.testing.assert_close(gx_l, gx_c, **close)
    torch.testing.assert_close(gw_l.sum((0, 1)), gw_c, **close)  # shared weight grad = sum over positions
    torch.testing.assert_close(gb_l.sum((1, 2)), gb_c, **close)


SHARED_FILTER_CASES = [(1, 1, (6, 6)), (2, 2, (7, 5)), ((1, 2), 0, (5, 8))]


@pytest.mark.parametrize("stride,padding,size", SHARED_FILTER_CASES)
def test_shared_filter_equals_conv2d(stride, padding, size) -> None:  # noqa: ANN001
    check_shared_filter_equals_conv2d(stride, padding, size, "portable")


def test_gradcheck() -> None:
    x, weight, b, stride, padding, _ = make_case(("tiny", 2, 2, (4, 3), 2, (2, 2), 1, (1, 0, 1, 1)))
    assert torch.autograd.gradcheck(lambda x, w, b: local_conv2d(x, w, b, stride, padding), (x, weight, b))


def test_saves_only_input_and_weight() -> None:
    layer = LocallyConnected2d(4, 3, 6, 3, padding=1)
    x = torch.randn(2, 4, 6, 6, requires_grad=True)
    y = layer(x)
    saved = y.grad_fn.saved_tensors
    assert len(saved) == 2
    assert saved[0].data_ptr() == x.data_ptr() and saved[1].data_ptr() == layer.weight.data_ptr()


def test_channels_last_and_strided_inputs() -> None:
    layer = LocallyConnected2d(3, 4, (6, 5), 3, stride=(1, 2), padding=1).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    ref = naive_local_conv2d(x, layer.weight, layer.bias, layer.stride, layer.padding)
    x_cl = x.to(memory_format=torch.channels_last).requires_grad_()
    y = layer(x_cl)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref)
    y.sum().backward()
    assert x_cl.grad.is_contiguous(memory_format=torch.channels_last)
    wide = torch.randn(2, 6, 6, 10, dtype=torch.float64)[:, ::2, :, ::2]  # non-contiguous view, [2, 3, 6, 5]
    torch.testing.assert_close(layer(wide), naive_local_conv2d(wide, layer.weight, layer.bias, (1, 2), 1))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_on_cpu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    layer = LocallyConnected2d(8, 4, 6, 3, padding=1)
    x = torch.randn(4, 8, 6, 6)
    ref = layer(x)
    with torch.autocast("cpu", dtype=dtype):
        y = layer(x)
    assert y.dtype == dtype
    assert (y.float() - ref).norm() / ref.norm() < 2e-2
    y.float().sum().backward()
    assert layer.weight.grad.dtype == torch.float32 and layer.bias.grad.dtype == torch.float32


def test_torch_compile_matches_eager() -> None:
    torch.manual_seed(0)
    layer = LocallyConnected2d(3, 4, (5, 6), 3, stride=(2, 1), padding=1)
    x = torch.randn(2, 3, 5, 6, requires_grad=True)
    y_ref = layer(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), (x, layer.weight, layer.bias))
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager")
    y = compiled(x)
    g = torch.autograd.grad(y.square().sum(), (x, layer.weight, layer.bias))
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)


def test_layer_attributes_init_and_repr() -> None:
    torch.manual_seed(0)
    layer = LocallyConnected2d(64, 32, 6, 3, padding=1)
    assert layer.output_size == (6, 6)
    assert layer.weight.shape == (6, 6, 32, 64, 3, 3) and layer.bias.shape == (32, 6, 6)
    assert layer.init_std == pytest.approx(1 / math.sqrt(64 * 9))
    assert layer.weight.std().item() == pytest.approx(layer.init_std, rel=0.02)
    assert layer.weight.mean().abs().item() < 0.05 * layer.init_std
    assert torch.count_nonzero(layer.bias) == 0
    assert LocallyConnected2d(4, 2, 6, 3, gain=2.0).init_std == pytest.approx(2 / 6)
    set_std = LocallyConnected2d(64, 64, 6, 3, padding=1, init_std=0.04)
    assert set_std.init_std == 0.04 and set_std.weight.std().item() == pytest.approx(0.04, rel=0.02)
    rect = LocallyConnected2d(2, 3, (7, 5), (3, 2), stride=(2, 1), bias=False)
    assert rect.output_size == (3, 4) and rect.bias is None
    text = repr(rect)
    for part in ("input_size=(7, 5)", "kernel_size=(3, 2)", "stride=(2, 1)", "output_size=(3, 4)",
                 "weight=[3, 4, 3, 2, 3, 2]", "bias=False"):
        assert part in text, text


def test_state_dict_round_trip() -> None:
    layer = LocallyConnected2d(3, 4, 5, 3, padding=1)
    buffer = io.BytesIO()
    torch.save(layer.state_dict(), buffer)
    buffer.seek(0)
    other = LocallyConnected2d(3, 4, 5, 3, padding=1)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(other(x), layer(x))
    assert set(layer.state_dict()) == {"weight", "bias"}


def test_wrong_input_shape_states_expected_and_actual() -> None:
    layer = LocallyConnected2d(64, 32, 6, 3, padding=1)
    with pytest.raises(ValueError, match=r"expected input \[N, 64, 6, 6\] or \[64, 6, 6\], got \[2, 64, 8, 8\]"):
        layer(torch.randn(2, 64, 8, 8))
    with pytest.raises(ValueError, match=r"expected input \[N, 64, 6, 6\] or \[64, 6, 6\], got \[64, 6\]"):
        layer(torch.randn(64, 6))
    weight = torch.randn(6, 6, 32, 64, 3, 3)
    with pytest.raises(ValueError, match=r"gives 4x4 output positions, but the weight \[6, 6, 32, 64, 3, 3\] has 6x6"):
        local_conv2d(torch.randn(2, 64, 6, 6), weight, padding=0)
    with pytest.raises(ValueError, match=r"expected input \[N, 64, H, W\].*got \[2, 3, 6, 6\]"):
        local_conv2d(torch.randn(2, 3, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match=r"expected bias \[32, 6, 6\] \(untied\) or \[32\] \(shared\), got \[6, 6\]"):
        local_conv2d(torch.randn(2, 64, 6, 6), weight, torch.zeros(6, 6), padding=1)
    with pytest.raises(ValueError, match="no output position"):
        LocallyConnected2d(3, 3, 2, 5)


def test_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    x, weight = torch.randn(1, 2, 4, 4), torch.randn(4, 4, 2, 2, 1, 1)
    monkeypatch.delenv(local_functional.BACKEND_ENV, raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert select_backend(x, weight) == "portable"  # auto on CPU
    monkeypatch.setenv(local_functional.BACKEND_ENV, "Portable")
    assert select_backend(x, weight) == "portable"
    monkeypatch.setenv(local_functional.BACKEND_ENV, "cudnn")
    with pytest.raises(ValueError, match="LOCALCONV_LOCAL_BACKEND.*'cudnn'"):
        local_conv2d(x, weight)
    assert select_backend(x, weight, backend="auto") == "portable"  # the argument wins over the env var
    with pytest.raises(ValueError, match="forces backend 'triton'.*cpu"):
        select_backend(x, weight, backend="triton")
    with pytest.raises(ValueError, match="unknown backend"):
        LocallyConnected2d(2, 2, 4, 1, backend="fast")


def test_benchmark_baselines_compute_the_same_function() -> None:
    # benchmarks/local_layer.py compares against these; they must compute the same layer.
    spec = importlib.util.spec_from_file_location("bench_local_layer", REPO / "benchmarks" / "local_layer.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    x, weight, b, _, _, _ = make_case(("bench", 2, 3, (5, 5), 4, 3, 1, 1))
    ref = local_conv2d(x, weight, b, 1, 1)
    torch.testing.assert_close(bench.unfold_einsum_forward(x, weight, b, 3, 1), ref)
    snippet_w = weight.permute(2, 3, 0, 1, 4, 5).reshape(1, 4, 3, 5, 5, 9)  # [1, O, C, OH, OW, k*k]
    torch.testing.assert_close(bench.snippet_forward(x, snippet_w, b.unsqueeze(0), 3, 1), ref)


def test_package_works_without_triton() -> None:
    code = textwrap.dedent("""
        import sys
        class BlockTriton:
            def find_spec(self, name, path=None, target=None):
                if name == "triton" or name.startswith("triton."):
                    raise ModuleNotFoundError("No module named triton (blocked for this test)")
                return None
        sys.meta_path.insert(0, BlockTriton())
        import torch
        from localconv import LocallyConnected2d
        from localconv.nn import functional
        layer = LocallyConnected2d(2, 3, 5, 3, padding=1)
        layer(torch.randn(2, 2, 5, 5)).sum().backward()
        assert functional._load_triton() is None
        assert "triton" not in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr


# (spatial size, kernel, stride, padding, dilation, groups): 1-D, 2-D (grouped, strided, dilated), 3-D
TAPS_LAST_CASES = [((9,), (3,), (2,), 1, (1,), 1), ((7, 6), (3, 2), (1, 2), 1, (2, 1), 2),
                   ((6, 6), (3, 3), (1, 1), 1, (1, 1), 1), ((4, 5, 4), (2, 3, 2), (1, 1, 2), 0, (1, 1, 1), 1)]


@pytest.mark.parametrize("case", TAPS_LAST_CASES, ids=lambda c: f"{len(c[0])}d-g{c[5]}")
def test_taps_last_weight_is_bit_identical_and_keeps_its_gradient_layout(case: tuple) -> None:
    # local_portable.taps_last_weight: the same values in [*out, O, *kernel, C/g] memory order; the
    # portable backend then skips its weight transposes. Output and gradients must not change at all,
    # and the eager first-order gradient comes back in the weight's memory order (autograd keeps it).
    size, kernel, stride, padding, dilation, groups = case
    d, n, c, o = len(size), 3, 4, 6
    gen = torch.Generator().manual_seed(1)
    out = [(s + 2 * padding - dl * (k - 1) - 1) // st + 1 for s, k, st, dl in zip(size, kernel, stride, dilation)]
    x = torch.randn(n, c, *size, generator=gen, requires_grad=True)
    weight = torch.randn(*out, o, c // groups, *kernel, generator=gen)
    bias = torch.randn(o, *out, generator=gen)
    results = []
    for w in (weight.clone(), local_portable.taps_last_weight(weight, d)):
        w.requires_grad_()
        y = local_functional.local_conv(x, w, bias, stride, padding, dilation, groups, backend="portable")
        gx, gw = torch.autograd.grad(y, (x, w), torch.ones_like(y))
        results.append((y, gx, gw, w))
    (y0, gx0, gw0, w0), (y1, gx1, gw1, w1) = results
    assert not w1.is_contiguous() and torch.equal(w0, w1)
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1) and torch.equal(gw0, gw1)
    assert gw1.stride() == w1.stride() and gw0.is_contiguous()


def test_backward_reuses_the_forwards_padded_input_and_notices_a_changed_input(monkeypatch: pytest.MonkeyPatch
                                                                               ) -> None:
    # The eager forward keeps the padded channels-last input it built for its own backward (local_ops._handoff);
    # the gradients are those of the reference, and an input changed in place after the forward is refused
    # by autograd (the kept copy is never used for another tensor's values).
    seen = []
    backward = local_portable.backward

    def spy(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        seen.append(kwargs.get("padded"))
        return backward(*args, **kwargs)

    monkeypatch.setattr(local_portable, "backward", spy)
    x, w, b = make_inputs(3, 4, (6, 6), 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 1)
    y = local_conv(x, w, b, 1, 1, backend="portable")
    grads = torch.autograd.grad(y.square().sum(), (x, w, b))  # first order: the fused backward
    assert len(seen) == 1 and seen[0] is not None and seen[0].shape == (3, 8, 8, 4)
    ref = naive_local_conv(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    for got, want in zip(grads, torch.autograd.grad(ref.square().sum(), (x, w, b))):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    with torch.no_grad():  # no graph: nothing kept
        local_conv(x, w, b, 1, 1, backend="portable")
    assert local_ops._handoff.padded is None
    leaf = x.detach().clone()
    y = local_conv(leaf, w, b, 1, 1, backend="portable")
    leaf.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
