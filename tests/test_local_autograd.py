"""Higher-order gradients, forward-mode AD and torch.func on the locally connected ops (portable backend).

Every case is float64 against ``gradcheck``/``gradgradcheck`` (numerical Jacobians) or against the
plain-autograd references of ``local_reference``.
"""
from __future__ import annotations

import pytest
import torch
from local_reference import make_inputs, naive_local_conv, unfold_einsum_local_conv2d

from localconv import LocallyConnected2d
from localconv.nn.functional import local_conv, local_conv2d

# (id, N, C, size, O, kernel, stride, padding pairs, dilation, groups, bias)
CASES = [
    ("1d", 2, 2, (7,), 3, (3,), (1,), (1, 1), (1,), 1, "untied"),
    ("1d-strided-dilated-asym", 2, 2, (9,), 2, (2,), (2,), (0, 2), (3,), 1, "untied"),
    ("2d", 2, 2, (4, 3), 2, (2, 2), (1, 1), (1, 0, 1, 1), (1, 1), 1, "untied"),
    ("2d-strided", 2, 2, (5, 4), 2, (3, 2), (2, 1), (1, 1, 0, 0), (1, 1), 1, None),
    ("2d-dilated", 1, 2, (5, 5), 2, (2, 2), (1, 1), (0, 0, 1, 1), (2, 2), 1, "shared"),
    ("2d-grouped", 2, 4, (4, 4), 4, (2, 2), (1, 2), (0, 1, 1, 0), (1, 1), 2, "untied"),
    ("3d", 1, 2, (3, 4, 3), 2, (2, 2, 2), (1, 2, 1), (0, 1, 1, 0, 0, 1), (1, 1, 1), 1, "untied"),
    ("3d-dilated-grouped", 1, 2, (4, 3, 4), 2, (2, 1, 2), (1, 1, 2), (1, 0, 0, 0, 0, 1), (2, 1, 1), 2, "shared"),
]


def _run(case: tuple):  # noqa: ANN202
    _, n, c, size, o, kernel, stride, pads, dilation, groups, bias = case
    x, w, b = make_inputs(n, c, size, o, kernel, stride, pads, dilation, groups, bias)
    inputs = (x, w) if b is None else (x, w, b)

    def fn(x, w, b=None):  # noqa: ANN001, ANN202
        return local_conv(x, w, b, stride, pads, dilation, groups, backend="portable")

    def ref(x, w, b=None):  # noqa: ANN001, ANN202
        return naive_local_conv(x, w, b, stride, pads, dilation, groups)

    return fn, ref, inputs


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference_and_gradgradcheck(case: tuple) -> None:
    fn, ref, inputs = _run(case)
    torch.testing.assert_close(fn(*inputs), ref(*inputs), rtol=0, atol=1e-12)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_gradient_penalty_matches_unfold_einsum() -> None:
    # The WGAN-GP style example: the penalty on the input gradient must train the weights.
    torch.manual_seed(0)
    layer = LocallyConnected2d(4, 3, 6, 3, padding=1).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(5, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w_ref = layer.weight.detach().clone().requires_grad_()
    b_ref = layer.bias.detach().clone().requires_grad_()
    x_ref = x.detach().clone().requires_grad_()

    def penalty_loss(out: torch.Tensor, inp: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad(out.tanh().sum(), inp, create_graph=True)
        assert g.requires_grad
        return out.square().mean() + (g**2).sum()

    got = torch.autograd.grad(penalty_loss(layer(x), x), [layer.weight, x, layer.bias])
    want = torch.autograd.grad(penalty_loss(unfold_einsum_local_conv2d(x_ref, w_ref, b_ref, 3, 1), x_ref),
                               [w_ref, x_ref, b_ref])
    for a, b in zip(got, want):
        assert (a - b).abs().max().item() <= 1e-10 * max(1.0, b.abs().max().item())
    # and the second-order part is really there: without it the weight gradient is far off
    plain = torch.autograd.grad(unfold_einsum_local_conv2d(x_ref, w_ref, b_ref, 3, 1).square().mean(), w_ref)[0]
    assert (plain - want[0]).abs().max() > 1e-3


def test_torch_func_transforms() -> None:
    fn, ref, (x, w, b) = _run(CASES[5])  # grouped, strided, asymmetric padding
    x, w, b = x.detach(), w.detach(), b.detach()
    # vmap over the input (folded into the batch) and over the weight (looped)
    xs, ws = torch.randn(3, *x.shape, dtype=x.dtype), torch.randn(3, *w.shape, dtype=w.dtype)
    torch.testing.assert_close(torch.func.vmap(fn, (0, None, None))(xs, w, b),
                               torch.stack([ref(xi, w, b) for xi in xs]))
    torch.testing.assert_close(torch.func.vmap(fn, (None, 0, None))(x, ws, b),
                               torch.stack([ref(x, wi, b) for wi in ws]))
    # grad, jacrev, jvp, jacfwd, and per-sample weight gradients (vmap of grad)
    loss = lambda f: (lambda x, w, b: f(x, w, b).sin().sum())  # noqa: E731
    for got, want in zip(torch.func.grad(loss(fn), (0, 1, 2))(x, w, b), torch.func.grad(loss(ref), (0, 1, 2))(x, w, b)):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.func.jacrev(fn, 1)(x, w, b), torch.func.jacrev(ref, 1)(x, w, b))
    tangents = (torch.randn_like(x), torch.randn_like(w), torch.randn_like(b))
    out, tangent = torch.func.jvp(fn, (x, w, b), tangents)
    out_ref, tangent_ref = torch.func.jvp(ref, (x, w, b), tangents)
    torch.testing.assert_close(out, out_ref)
    torch.testing.assert_close(tangent, tangent_ref)
    torch.testing.assert_close(torch.func.jacfwd(fn, 0)(x, w, b), torch.func.jacfwd(ref, 0)(x, w, b))
    per_sample = torch.func.vmap(torch.func.grad(lambda xi, w: loss(fn)(xi[None], w, b), 1), (0, None))(x, w)
    per_sample_ref = torch.stack([torch.func.grad(lambda w, xi=xi: loss(ref)(xi[None], w, b))(w) for xi in x])
    torch.testing.assert_close(per_sample, per_sample_ref)
    # forward-over-reverse: the Hessian-vector product of a scalar loss
    hvp = torch.func.jvp(torch.func.grad(loss(fn), 1), (x, w, b), tangents)[1]
    hvp_ref = torch.func.jvp(torch.func.grad(loss(ref), 1), (x, w, b), tangents)[1]
    torch.testing.assert_close(hvp, hvp_ref)


def test_forward_ad_dual_numbers() -> None:
    import torch.autograd.forward_ad as fwAD

    fn, ref, (x, w, b) = _run(CASES[2])
    x, w, b = x.detach(), w.detach(), b.detach()
    dx, dw = torch.randn_like(x), torch.randn_like(w)
    with fwAD.dual_level():
        y = fn(fwAD.make_dual(x, dx), fwAD.make_dual(w, dw), b)
        tangent = fwAD.unpack_dual(y).tangent
    torch.testing.assert_close(tangent, ref(dx, w) + ref(x, dw))


def test_custom_ops_pass_opcheck() -> None:
    from localconv.nn import local_ops

    fn, _, (x, w, b) = _run(CASES[5])
    x, w, b = x.detach().requires_grad_(), w.detach().requires_grad_(), b.detach().requires_grad_()
    spec = ([1, 2], [0, 1, 1, 0], [1, 1], 2)
    y = fn(x, w, b)
    gy = torch.randn_like(y)
    utils = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(local_ops.local_conv_op, (x, w, b, *spec, "portable"), test_utils=utils)
    torch.library.opcheck(local_ops.grad_input_op, (gy, w, list(x.shape), *spec, "portable", False), test_utils=utils)
    torch.library.opcheck(local_ops.grad_weight_op, (gy, x, list(w.shape), *spec, "portable"), test_utils=utils)


def test_custom_op_autograd_gives_double_backward() -> None:
    # The path torch.compile/export take: the ops' own register_autograd formulas, to second order.
    from localconv.nn import local_ops

    _, _, (x, w) = _run(CASES[3])
    spec = local_ops.Spec((2, 1), (1, 1, 0, 0), (1, 1), 1)
    assert torch.autograd.gradgradcheck(lambda x, w: local_ops._op_forward(x, w, None, spec, "portable"), (x, w))


def test_unsupported_backend_call_raises_clearly() -> None:
    x, w, _ = make_inputs(1, 2, (3, 3, 3), 2, (2, 2, 2), (1, 1, 1), (0,) * 6, (1, 1, 1))
    with pytest.raises(ValueError, match="forces backend 'triton'"):
        local_conv(x, w, backend="triton")
    with pytest.raises(ValueError, match="must share a dtype"):
        local_conv2d(torch.randn(1, 2, 3, 3), torch.randn(3, 3, 2, 2, 1, 1, dtype=torch.float64))
