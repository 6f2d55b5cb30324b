"""The 2-D layer computes bit for bit what it computed before the N-D rewrite (CPU, portable backend).

The cfg builder and the built-in models use ``LocallyConnected2d``; their outputs must not change, bit
for bit; their gradients within float32 rounding (the backward now sums in another order).
``frozen_forward``/``frozen_backward`` below are a verbatim copy of the portable computation as of
commit 6554ef5 (im2col in (kh, kw, c) order from a channels-last copy, bmm per chunk of output rows,
bias added in the copy to the output layout). The output comparison is exact (``torch.equal``),
against the same machine's BLAS, so it holds on any CPU, for the portable forward (oneDNN switched off). The
default float32 CPU forward runs the same GEMMs as oneDNN convolutions (local_onednn): another summation order,
so its outputs are compared to float32 rounding.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from localconv import LocallyConnected2d, create_model
from localconv.nn import local_portable

# torch.backends.mkldnn.flags() also sets oneDNN's TF32 switch, which warns on builds without Intel GPU support
pytestmark = pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")


def _portable_forward(module: torch.nn.Module, *inputs: torch.Tensor) -> torch.Tensor:
    """The module's output with the float32 CPU forward's oneDNN path off: the portable bmm forward."""
    with torch.backends.mkldnn.flags(enabled=False):
        return module(*inputs)

_CHUNK_BYTES = 8 << 20


def _padded_nhwc(x, pads):  # noqa: ANN001, ANN202
    top, bottom, left, right = pads
    x_nhwc = x.permute(0, 2, 3, 1)
    return F.pad(x_nhwc, (0, 0, left, right, top, bottom)) if any(pads) else x_nhwc.contiguous()


def _row_chunks(oh, ow, n, k, itemsize):  # noqa: ANN001, ANN202
    row_bytes = ow * n * k * itemsize
    rows = max(1, _CHUNK_BYTES // max(row_bytes, 1))
    for r0 in range(0, oh, rows):
        yield r0, min(r0 + rows, oh)


def _gather(xp, kernel, stride, ow, r0, r1, out):  # noqa: ANN001, ANN202
    (kh, kw), (sh, sw) = kernel, stride
    rows = xp[:, r0 * sh:(r1 - 1) * sh + kh]
    windows = rows.unfold(1, kh, sh).unfold(2, kw, sw)[:, :r1 - r0, :ow]
    out.view(r1 - r0, ow, xp.shape[0], kh, kw, xp.shape[3]).copy_(windows.permute(1, 2, 0, 4, 5, 3))
    return out


def _weight_columns(weight_rows):  # noqa: ANN001, ANN202
    rows, ow, o, c, kh, kw = weight_rows.shape
    return weight_rows.permute(0, 1, 2, 4, 5, 3).reshape(rows * ow, o, kh * kw * c)


def frozen_forward(x, weight, bias, stride, pads):  # noqa: ANN001, ANN201
    n, c = x.shape[:2]
    oh, ow, o, _, kh, kw = weight.shape
    k = c * kh * kw
    y = x.new_empty((oh * ow, n, o))
    xp = _padded_nhwc(x, pads)
    buffer = None
    for r0, r1 in _row_chunks(oh, ow, n, k, x.element_size()):
        l0, l1 = r0 * ow, r1 * ow
        buffer = buffer if buffer is not None else x.new_empty((l1 - l0, n, k))
        chunk = _gather(xp, (kh, kw), stride, ow, r0, r1, buffer[:l1 - l0])
        torch.bmm(chunk, _weight_columns(weight[r0:r1]).transpose(1, 2), out=y[l0:l1])
    y_nchw = y.permute(1, 2, 0).reshape(n, o, oh, ow)
    out = torch.empty((n, o, oh, ow), dtype=y.dtype)
    return torch.add(y_nchw, bias, out=out) if bias is not None else out.copy_(y_nchw)


def frozen_backward(grad_out, x, weight, stride, pads):  # noqa: ANN001, ANN201
    n, c, h, w = x.shape
    oh, ow, o, _, kh, kw = weight.shape
    sh, sw = stride
    k = c * kh * kw
    top, bottom, left, right = pads
    grad_lno = grad_out.permute(2, 3, 0, 1).reshape(oh * ow, n, o)
    xp = _padded_nhwc(x, pads)
    grad_w = torch.empty_like(weight)
    grid = grad_out.new_zeros((n, h + top + bottom, w + left + right, c))
    buffer = grad_w_rows = None
    for r0, r1 in _row_chunks(oh, ow, n, k, grad_out.element_size()):
        l0, l1, rows = r0 * ow, r1 * ow, r1 - r0
        if buffer is None:
            buffer = grad_out.new_empty((l1 - l0, n, k))
            grad_w_rows = grad_out.new_empty((l1 - l0, o, k))
        chunk = _gather(xp, (kh, kw), stride, ow, r0, r1, buffer[:l1 - l0])
        torch.bmm(grad_lno[l0:l1].transpose(1, 2), chunk, out=grad_w_rows[:l1 - l0])
        grad_w[r0:r1] = grad_w_rows[:l1 - l0].view(rows, ow, o, kh, kw, c).permute(0, 1, 2, 5, 3, 4)
        grad_cols = torch.bmm(grad_lno[l0:l1], _weight_columns(weight[r0:r1]), out=buffer[:l1 - l0])
        taps = grad_cols.view(rows, ow, n, kh, kw, c)
        for u in range(kh):
            for v in range(kw):
                top_row = r0 * sh + u
                grid[:, top_row:top_row + sh * (rows - 1) + 1:sh, v:v + sw * (ow - 1) + 1:sw] += (
                    taps[:, :, :, u, v].permute(2, 0, 1, 3))
    grad_x = grid[:, top:top + h, left:left + w].permute(0, 3, 1, 2).contiguous()
    return grad_x, grad_w, grad_out.sum(0)


# (in, out, input_size, kernel, stride, padding, N)
LAYERS = [
    (64, 64, 6, 3, 1, 1, 16),                  # cc-11pct local3
    (64, 32, 6, 3, 1, 1, 16),                  # cc-11pct local4
    (3, 5, (7, 6), (3, 2), (2, 1), (1, 2, 0, 1), 3),
    (8, 4, 24, 5, 2, (2, 3, 2, 3), 2),         # ceil-rule style extra bottom/right padding
    (16, 8, 40, 3, 1, 1, 64),                  # 40x40 at N=64: more than one 8 MiB chunk of rows
]


@pytest.mark.parametrize("min_macs", [None, 0], ids=["default-backward", "per-tap-backward"])
@pytest.mark.parametrize("spec", LAYERS, ids=[f"{s[0]}to{s[1]}-{s[2]}" for s in LAYERS])
def test_layer_is_bit_identical_to_frozen_computation(spec: tuple, min_macs: int | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    if min_macs is not None:  # these small batches take the columns backward by default
        monkeypatch.setattr(local_portable, "TAP_GEMM_MIN_MACS", min_macs)
    c, o, size, kernel, stride, padding, n = spec
    torch.manual_seed(0)
    layer = LocallyConnected2d(c, o, size, kernel, stride=stride, padding=padding)
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(n, c, *layer.input_size, requires_grad=True)
    y = _portable_forward(layer, x)
    grad = torch.randn_like(y)
    gx, gw, gb = torch.autograd.grad(y, (x, layer.weight, layer.bias), grad)
    with torch.no_grad():
        y0 = frozen_forward(x, layer.weight, layer.bias, layer.stride, layer.padding)
        gx0, gw0, gb0 = frozen_backward(grad, x, layer.weight, layer.stride, layer.padding)
    assert torch.equal(y, y0), f"output: max difference {(y - y0).abs().max().item():.3g}"
    # the default forward (oneDNN on a float32 CPU tensor): the same sums in another order
    y_default = layer(x)
    torch.testing.assert_close(y_default, y0, rtol=1e-6, atol=1e-6 * y0.abs().max().item())
    assert torch.equal(torch.autograd.grad(y_default, layer.bias, grad)[0], gb0)
    assert torch.equal(gb, gb0)
    # The gradients are the same sums in another order (the input gradient accumulates each tap's GEMM
    # into its window directly, the weight gradient comes from per-tap GEMMs, both without columns), so
    # their last bits may differ (measured: at most 2e-7 of the largest value): a float32 rounding tolerance.
    grads = {"grad_input": (gx, gx0), "grad_weight": (gw, gw0)}
    # the differentiable backward (taken with create_graph, for higher-order gradients) too
    for name, a in zip(("grad_input", "grad_weight"),
                       torch.autograd.grad(layer(x), (x, layer.weight), grad, create_graph=True)):
        grads[f"{name} (create_graph)"] = (a, grads[name][1])
    for name, (a, b) in grads.items():
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6 * b.abs().max().item(),
                                   msg=lambda default, name=name: f"{name}: {default}")


def test_cfg_model_local_layers_are_bit_identical() -> None:
    # cc-11pct as the cfg builder builds it: every local layer's output equals the frozen computation.
    torch.manual_seed(0)
    model = create_model("cc-11pct").eval()
    seen = []

    def check(module, inputs, output):  # noqa: ANN001, ANN202
        neuron = getattr(module, "neuron", torch.nn.Identity())
        with torch.no_grad():
            ref = neuron(frozen_forward(inputs[0], module.weight, module.bias, module.stride, module.padding))
        seen.append(torch.equal(output, ref) if not torch.backends.mkldnn.enabled else
                    torch.allclose(output, ref, rtol=1e-5, atol=1e-6 * ref.abs().max().item()))

    for module in model.modules():
        if isinstance(module, LocallyConnected2d):
            module.register_forward_hook(check)
    images = torch.randn(4, 3, 24, 24)
    with torch.no_grad():
        _portable_forward(model, images)  # bit for bit
        model(images)  # the default oneDNN forward: to float32 rounding
    assert seen == [True, True, True, True]
