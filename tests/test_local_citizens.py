"""Issue 23: the locally connected layers as ordinary torch citizens.

Everyday tools on the parameters of 1-D/2-D/3-D layers built directly, on the meta device and lazily
(each compared with the same tool on an equivalent plain contiguous tensor, or with the reference
loop), empty batches through every path, Lazy layers after ``load_state_dict``, the functional
signatures and argument checks, and the memory the portable backend keeps between calls.
"""
from __future__ import annotations

import gc
import inspect

import numpy as np
import pytest
import torch
from local_reference import naive_local_conv
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parameters_to_vector, prune, vector_to_parameters

from localconv import (LazyLocallyConnected1d, LazyLocallyConnected2d, LazyLocallyConnected3d, LocallyConnected1d,
                       LocallyConnected2d, LocallyConnected3d)
from localconv.nn import functional as local_functional
from localconv.nn import local_ops, local_portable

LAYERS = {1: (LocallyConnected1d, LazyLocallyConnected1d, (7,)),
          2: (LocallyConnected2d, LazyLocallyConnected2d, (5, 4)),
          3: (LocallyConnected3d, LazyLocallyConnected3d, (2, 3, 2))}
BUILDS = ("direct", "meta", "lazy")
C_IN, C_OUT = 4, 6


def make_layer(d: int, build: str, dtype: torch.dtype = torch.float64, seed: int = 0) -> nn.Module:
    """A small layer (3-wide kernel, padding 1, 2 groups) made one of three ways, weights drawn from ``seed``."""
    layer_cls, lazy_cls, size = LAYERS[d]
    torch.manual_seed(seed)
    if build == "direct":
        layer = layer_cls(C_IN, C_OUT, size, 3, padding=1, groups=2, dtype=dtype)
    elif build == "meta":
        layer = layer_cls(C_IN, C_OUT, size, 3, padding=1, groups=2, device="meta", dtype=dtype)
        layer = layer.to_empty(device="cpu")
        layer.reset_parameters()
    else:
        layer = lazy_cls(C_OUT, 3, padding=1, groups=2, dtype=dtype)
        layer(torch.zeros(1, C_IN, *size, dtype=dtype))
    with torch.no_grad():  # a bias that matters for the comparisons
        layer.bias.copy_(torch.randn(layer.bias.shape, dtype=dtype))
    return layer


def reference(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """The layer's function by the per-position loop, with ``weight`` (default: its own)."""
    return naive_local_conv(x, layer.weight if weight is None else weight, layer.bias, layer.stride, layer.padding,
                            layer.dilation, layer.groups)


def inputs(d: int, n: int = 3, dtype: torch.dtype = torch.float64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, C_IN, *LAYERS[d][2], dtype=dtype, generator=torch.Generator().manual_seed(seed))


CASES = [(d, build) for d in (1, 2, 3) for build in BUILDS]
case_ids = [f"{d}d-{build}" for d, build in CASES]


@pytest.mark.parametrize(("d", "build"), CASES, ids=case_ids)
def test_parameter_is_an_ordinary_contiguous_tensor(d: int, build: str, tmp_path) -> None:  # noqa: ANN001
    layer = make_layer(d, build)
    assert type(layer) is LAYERS[d][0]
    w = layer.weight
    assert w.is_contiguous() and w.view(-1).shape == (w.numel(),)
    assert w.view(-1).data_ptr() == w.data_ptr()  # a view, not a copy
    x = inputs(d).requires_grad_()
    layer(x).square().sum().backward()
    assert layer.weight.grad.is_contiguous() and layer.weight.grad.stride() == w.stride()
    # safetensors refuses non-contiguous tensors: the state dict saves and loads as it is
    path = str(tmp_path / "layer.safetensors")
    save_file(layer.state_dict(), path)
    loaded = load_file(path)
    assert loaded.keys() == layer.state_dict().keys()
    assert all(torch.equal(loaded[k], v) for k, v in layer.state_dict().items())


@pytest.mark.parametrize(("d", "build"), CASES, ids=case_ids)
def test_pruning_matches_pruning_a_plain_tensor(d: int, build: str) -> None:
    layer, other = make_layer(d, build), make_layer(d, build, seed=5)
    plain, plain_other = nn.Module(), nn.Module()  # the same values in plain contiguous parameters
    plain.weight = nn.Parameter(layer.weight.detach().clone())
    plain_other.weight = nn.Parameter(other.weight.detach().clone())
    prune.l1_unstructured(layer, "weight", amount=0.3)
    prune.l1_unstructured(plain, "weight", amount=0.3)
    assert torch.equal(layer.weight_mask, plain.weight_mask) and 0 < int((layer.weight_mask == 0).sum())
    x = inputs(d)
    torch.testing.assert_close(layer(x), reference(layer, x, plain.weight_orig.detach() * plain.weight_mask))
    prune.global_unstructured([(layer, "weight"), (other, "weight")], prune.L1Unstructured, amount=0.5)
    prune.global_unstructured([(plain, "weight"), (plain_other, "weight")], prune.L1Unstructured, amount=0.5)
    assert torch.equal(layer.weight_mask, plain.weight_mask) and torch.equal(other.weight_mask, plain_other.weight_mask)
    torch.testing.assert_close(other(x), reference(other, x, plain_other.weight))
    prune.remove(layer, "weight")
    assert layer.weight.is_contiguous() and torch.equal(layer.weight, plain.weight)


@pytest.mark.parametrize(("d", "build"), CASES, ids=case_ids)
def test_parameters_to_vector_and_back(d: int, build: str) -> None:
    layer = make_layer(d, build)
    x = inputs(d)
    before = layer(x)  # computed once with the old values: nothing of them may be reused below
    vec = parameters_to_vector(layer.parameters())
    assert torch.equal(vec, torch.cat([p.detach().reshape(-1) for p in layer.parameters()]))
    new_weight = layer.weight.detach() * -2.0
    vector_to_parameters(torch.cat([new_weight.reshape(-1), layer.bias.detach().reshape(-1)]), layer.parameters())
    assert torch.equal(layer.weight, new_weight)
    after = layer(x)
    torch.testing.assert_close(after, reference(layer, x, new_weight))
    assert not torch.allclose(after, before)
    with torch.no_grad():  # an untracked write (weight._version unchanged) is seen as well
        layer.weight.data.mul_(0.5)
    torch.testing.assert_close(layer(x), reference(layer, x, new_weight * 0.5))


@pytest.mark.parametrize(("d", "build"), CASES, ids=case_ids)
def test_lbfgs_matches_lbfgs_on_the_reference(d: int, build: str) -> None:
    layer = make_layer(d, build)
    x, target = inputs(d), torch.randn(3, C_OUT, *layer.output_size, dtype=torch.float64)
    w_ref = nn.Parameter(layer.weight.detach().clone())  # the reference loop on a plain contiguous tensor
    b_ref = nn.Parameter(layer.bias.detach().clone())

    def run(params: list, forward) -> list:  # noqa: ANN001
        optimizer = torch.optim.LBFGS(params, lr=0.5, max_iter=4, history_size=3)

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (forward() - target).square().mean()
            loss.backward()
            return loss

        for _ in range(2):
            optimizer.step(closure)
        return [p.detach() for p in params]

    got = run([layer.weight, layer.bias], lambda: layer(x))
    want = run([w_ref, b_ref], lambda: naive_local_conv(x, w_ref, b_ref, layer.stride, layer.padding,
                                                        layer.dilation, layer.groups))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-9)
    assert not torch.equal(got[0], make_layer(d, build).weight)  # it moved


def test_layouts_agree_and_old_taps_last_weights_still_work() -> None:
    # the parameter stored taps-last (the layers' CPU layout before issue 23) computes the same bits
    layer = make_layer(2, "direct", dtype=torch.float32)
    x = inputs(2, n=5, dtype=torch.float32).requires_grad_()
    results = []
    for w in (layer.weight.detach().clone(), local_portable.taps_last_weight(layer.weight.detach(), 2)):
        w.requires_grad_()
        y = local_functional.local_conv(x, w, layer.bias, layer.stride, layer.padding, layer.dilation, layer.groups)
        results.append((y, *torch.autograd.grad(y.square().sum(), (x, w))))
    for a, b in zip(*results):
        assert torch.equal(a, b)
    assert results[1][2].stride() == local_portable.taps_last_weight(layer.weight.detach(), 2).stride()


@pytest.mark.parametrize(("d", "build"), CASES, ids=case_ids)
def test_an_old_taps_last_checkpoint_loads_the_same_values(d: int, build: str, tmp_path) -> None:  # noqa: ANN001
    # before issue 23 a CPU layer's state dict held the weight taps-last (same logical values)
    old = make_layer(d, "direct", seed=3)
    state = dict(old.state_dict())
    state["weight"] = local_portable.taps_last_weight(state["weight"], d)
    torch.save(state, tmp_path / "old.pt")
    layer = make_layer(d, build)
    layer.load_state_dict(torch.load(tmp_path / "old.pt", weights_only=True))
    assert layer.weight.is_contiguous() and torch.equal(layer.weight, old.weight)
    x = inputs(d).requires_grad_()
    grad = torch.randn(3, C_OUT, *LAYERS[d][2], dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, reference(old, x), rtol=1e-9, atol=1e-11)
    got = torch.autograd.grad(y, (x, layer.weight), grad)
    for g, w in zip(got, _reference_grads(old, x, old.weight, grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)
    assert got[1].is_contiguous()


# ----------------------------------------------------------------------------------------------
# The taps-last copy of the weight, in one buffer per weight shared by all its graphs


def _reference_grads(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, grad: torch.Tensor) -> tuple:
    """(grad_x, grad_w) of the per-position loop with ``weight``."""
    xr, wr = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    y = naive_local_conv(xr, wr, layer.bias.detach(), layer.stride, layer.padding, layer.dilation, layer.groups)
    return torch.autograd.grad(y, (xr, wr), grad)


@pytest.mark.parametrize("d", [1, 2, 3])
def test_two_graphs_of_one_weight_backward_in_either_order(d: int) -> None:
    # siamese use: the second forward rewrites the weight's buffer before the first graph's backward
    layer = make_layer(d, "direct")
    xs = [inputs(d, seed=s).requires_grad_() for s in (1, 2)]
    ys = [layer(x) for x in xs]
    grads = [torch.randn_like(y) for y in ys]
    for i in (1, 0):
        got = torch.autograd.grad(ys[i], (xs[i], layer.weight), grads[i])
        for g, w in zip(got, _reference_grads(layer, xs[i], layer.weight, grads[i])):
            torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("query", [True, False], ids=["hooks-seen", "hooks-unseen"])
@pytest.mark.parametrize("how", ["allow_mutation_on_saved_tensors", "saved_tensors_hooks"])
def test_weight_changed_in_place_then_another_forward_keeps_the_first_forwards_values(
        how: str, query: bool, monkeypatch) -> None:  # noqa: ANN001
    # autograd allows the in-place change here (it saved the weight's old values), as nn.Conv2d's backward
    # shows; the first graph's backward must use those, not the buffer the second forward rewrote. With the
    # hooks unseen (a torch without the query) the taps-last copy is kept and its generation decides.
    if not query:
        monkeypatch.setattr(local_ops, "_saved_tensor_hooks", lambda ignore_is_tracing=False: None)
    layer = make_layer(2, "direct")
    x1, x2 = inputs(2, seed=1).requires_grad_(), inputs(2, seed=2)
    before = layer.weight.detach().clone()
    if how == "allow_mutation_on_saved_tensors":
        context = torch.autograd.graph.allow_mutation_on_saved_tensors()
    else:
        context = torch.autograd.graph.saved_tensors_hooks(lambda t: t.clone(), lambda t: t)
    with context:
        y1 = layer(x1)
        with torch.no_grad():
            layer.weight.mul_(2)
        layer(x2)  # rewrites the weight's taps-last buffer with the new values
        grad = torch.randn_like(y1)
        got = torch.autograd.grad(y1, (x1, layer.weight), grad)
    for g, w in zip(got, _reference_grads(layer, x1, before, grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_saved_tensor_hooks_see_everything_the_backward_keeps() -> None:
    # non-reentrant checkpointing and offloading work through these hooks: no private copy beside them
    layer = make_layer(2, "direct")
    x = inputs(2).requires_grad_()
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        y = layer(x)
    assert y.grad_fn.padded is None and y.grad_fn.fast_weight is None
    assert any(t is x for t in packed) and any(t is layer.weight for t in packed)
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight), grad)
    for g, w in zip(got, _reference_grads(layer, x, layer.weight, grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_threads_sharing_a_layer_get_the_single_threaded_results() -> None:
    import threading

    layer = make_layer(2, "direct")
    xs = [inputs(2, n=4, seed=s) for s in range(4)]

    def step(x: torch.Tensor) -> tuple:
        x = x.clone().requires_grad_()
        y = layer(x)
        return (y.detach(), *torch.autograd.grad(y.tanh().sum(), (x, layer.weight)))

    want = [step(x) for x in xs]
    got: list = [None] * len(xs)
    threads = [threading.Thread(target=lambda i=i: got.__setitem__(i, [step(xs[i]) for _ in range(3)]))
               for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for results, expected in zip(got, want):
        for result in results:
            for a, b in zip(result, expected):
                assert torch.equal(a, b)


def test_batched_gradients_and_vectorized_jacobian_and_hessian() -> None:
    # torch's legacy vmap (is_grads_batched, autograd.functional's vectorize=True), as on nn.Conv2d
    layer = LocallyConnected2d(2, 2, (3, 3), 3, padding=1, dtype=torch.float64)
    x = inputs(2, n=1)[:, :2, :3, :3].contiguous().requires_grad_()
    w, b = layer.weight.detach(), layer.bias.detach()

    def ours(x, w):  # noqa: ANN001, ANN202
        return local_functional.local_conv2d(x, w, b, 1, 1)

    def loop(x, w):  # noqa: ANN001, ANN202
        return naive_local_conv(x, w, b, (1, 1), (1, 1, 1, 1), (1, 1))

    grads = torch.randn(3, 1, 2, 3, 3, dtype=torch.float64)
    wr = w.clone().requires_grad_()
    got = torch.autograd.grad(ours(x, wr), (x, wr), grads, is_grads_batched=True)
    want = torch.autograd.grad(loop(x, wr), (x, wr), grads, is_grads_batched=True)
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)
    args = (x.detach(), w)
    for got, want in ((torch.autograd.functional.jacobian(ours, args, vectorize=True),
                       torch.autograd.functional.jacobian(loop, args)),
                      (torch.autograd.functional.hessian(lambda *a: ours(*a).tanh().sum(), args, vectorize=True),
                       torch.autograd.functional.hessian(lambda *a: loop(*a).tanh().sum(), args))):
        for a, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)):
            torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-11)


def test_a_forward_that_raises_leaves_no_hand_off(monkeypatch) -> None:  # noqa: ANN001
    layer = make_layer(2, "direct")
    x = inputs(2).requires_grad_()

    def failing(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise MemoryError("test")

    monkeypatch.setattr(local_ops, "forward_impl", failing)
    with pytest.raises(MemoryError):
        layer(x)
    assert getattr(local_ops._handoff, "padded", None) is None  # would hold x and the weight's copy


def test_meta_device_forward_and_backward() -> None:
    # shape inference on meta (as nn.Conv2d allows): no autocast query for a device without autocast
    for d in (1, 2, 3):
        layer = LAYERS[d][0](C_IN, C_OUT, LAYERS[d][2], 3, padding=1, groups=2, device="meta")
        y = layer(torch.empty(3, C_IN, *LAYERS[d][2], device="meta", requires_grad=True))
        assert y.shape == (3, C_OUT, *LAYERS[d][2]) and y.device.type == "meta"
        y.sum().backward()
        assert layer.weight.grad.shape == layer.weight.shape


# ----------------------------------------------------------------------------------------------
# Empty batches


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("d", [1, 2, 3])
def test_empty_batch_forward_and_backward(d: int, groups: int) -> None:
    layer = LAYERS[d][0](C_IN, C_OUT, LAYERS[d][2], 3, padding=1, groups=groups)
    conv = getattr(nn, f"Conv{d}d")(C_IN, C_OUT, 3, padding=1, groups=groups)
    x = torch.zeros(0, C_IN, *LAYERS[d][2], requires_grad=True)
    y = layer(x)
    assert y.shape == conv(x).shape == (0, C_OUT, *layer.output_size)
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.equal(layer.weight.grad, torch.zeros_like(layer.weight)) and layer.weight.grad.is_contiguous()
    assert torch.equal(layer.bias.grad, torch.zeros_like(layer.bias))
    # the differentiable gradients (create_graph: the ops that higher orders take) as well
    x2 = torch.zeros(0, C_IN, *LAYERS[d][2], dtype=torch.float64, requires_grad=True)
    layer64 = layer.double()
    (gx,) = torch.autograd.grad(layer64(x2).sum(), x2, create_graph=True)
    (gw,) = torch.autograd.grad(gx.sum() + layer64(x2).sum(), layer64.weight, allow_unused=True)
    assert gx.shape == x2.shape and (gw is None or not gw.any())
    with torch.no_grad():  # the ONNX decomposition, and the kernels' entry points of both backends (the
        # Triton ones return before launching, or importing, anything: tested here without triton)
        spec = local_ops.Spec(layer.stride, layer.padding, layer.dilation, groups)
        assert local_ops.decomposed(x2, layer64.weight, layer64.bias, spec).shape == y.shape
        for backend in ("portable", "triton"):
            gy = torch.zeros(y.shape, dtype=torch.float64)
            assert local_ops.forward_impl(x2, layer64.weight, layer64.bias, spec, backend).shape == y.shape
            gx = local_ops.grad_input_impl(gy, layer64.weight, list(x2.shape), spec, backend, False)
            gw = local_ops.grad_weight_impl(gy, x2, list(layer64.weight.shape), spec, backend)
            assert gx.shape == x2.shape and torch.equal(gw, torch.zeros_like(layer64.weight))


@pytest.mark.slow  # compiles (aot_eager) and exports a 2-D and a grouped 3-D layer: a few seconds
@pytest.mark.parametrize(("d", "groups"), [(2, 1), (3, 2)])
def test_empty_batch_compile_and_export(d: int, groups: int) -> None:
    layer = LAYERS[d][0](C_IN, C_OUT, LAYERS[d][2], 3, padding=1, groups=groups)
    x = torch.zeros(0, C_IN, *LAYERS[d][2], requires_grad=True)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    assert y.shape == (0, C_OUT, *layer.output_size)
    y.sum().backward()
    assert x.grad.shape == x.shape and not layer.weight.grad.any() and not layer.bias.grad.any()
    exported = torch.export.export(layer, (x.detach(),))
    assert exported.module()(x.detach()).shape == y.shape
    assert layer(torch.ones(2, C_IN, *LAYERS[d][2])).shape[0] == 2  # a non-empty batch still works


# ----------------------------------------------------------------------------------------------
# Lazy layers + load_state_dict


@pytest.mark.parametrize("d", [1, 2, 3])
def test_lazy_layer_loads_a_state_dict_and_checks_it_on_the_first_call(d: int) -> None:
    layer_cls, lazy_cls, size = LAYERS[d]
    source = make_layer(d, "direct")
    lazy = lazy_cls(C_OUT, 3, padding=1, groups=2, dtype=torch.float64)
    assert not lazy.load_state_dict(source.state_dict()).missing_keys
    x = inputs(d)
    torch.testing.assert_close(lazy(x), source(x), rtol=0, atol=0)
    assert type(lazy) is layer_cls and lazy.in_channels == C_IN and lazy.input_size == size
    assert torch.equal(lazy.weight, source.weight) and lazy.weight.is_contiguous()

    # a state dict of another geometry: a clear error at the first call, naming both shapes
    mismatched = lazy_cls(C_OUT, 3, padding=1, groups=2, dtype=torch.float64)
    mismatched.load_state_dict(source.state_dict())
    bigger = torch.zeros(1, C_IN, *(s + 1 for s in size), dtype=torch.float64)
    with pytest.raises(ValueError, match=r"loaded weight has shape .* needs"):
        mismatched(bigger)
    with pytest.raises(ValueError, match=r"loaded weight has shape .* needs"):  # still refused, still lazy
        mismatched(bigger)
    assert isinstance(mismatched, lazy_cls) and mismatched.input_size is None
    other_channels = lazy_cls(C_OUT, 3, padding=1, groups=2, dtype=torch.float64)
    other_channels.load_state_dict(source.state_dict())
    with pytest.raises(ValueError, match="in_channels=8"):
        other_channels(torch.zeros(1, 8, *size, dtype=torch.float64))


def test_lazy_layer_loads_a_weight_only_state_dict_and_initializes_the_rest() -> None:
    source = make_layer(2, "direct")
    lazy = LazyLocallyConnected2d(C_OUT, 3, padding=1, groups=2, dtype=torch.float64)
    result = lazy.load_state_dict({"weight": source.weight.detach()}, strict=False)
    assert result.missing_keys == ["bias"]
    lazy(inputs(2))
    assert torch.equal(lazy.weight, source.weight) and not lazy.bias.any()


# ----------------------------------------------------------------------------------------------
# Signatures and argument checks


def test_functional_signatures_are_one() -> None:
    names = [list(inspect.signature(f).parameters) for f in (local_functional.local_conv1d,
                                                             local_functional.local_conv2d,
                                                             local_functional.local_conv3d,
                                                             local_functional.local_conv)]
    assert names[0] == names[1] == names[2] == names[3] == [
        "x", "weight", "bias", "stride", "padding", "dilation", "groups", "backend"]
    layer = make_layer(2, "direct", dtype=torch.float32)
    x = inputs(2, dtype=torch.float32)
    positional = local_functional.local_conv2d(x, layer.weight, layer.bias, 1, 1, 1, 2, "portable")
    torch.testing.assert_close(positional, layer(x))


def test_misplaced_arguments_raise_value_errors_naming_them() -> None:
    layer = make_layer(2, "direct", dtype=torch.float32)
    x = inputs(2, dtype=torch.float32)
    with pytest.raises(ValueError, match="dilation must be an int.*backend="):
        local_functional.local_conv2d(x, layer.weight, layer.bias, 1, 1, "portable")  # the old sixth argument
    with pytest.raises(ValueError, match="backend must be None or one of"):
        local_functional.local_conv2d(x, layer.weight, layer.bias, 1, 1, 1, 2, 3)
    with pytest.raises(ValueError, match="groups must be an int"):
        local_functional.local_conv1d(inputs(1, dtype=torch.float32), make_layer(1, "direct", torch.float32).weight,
                                      None, 1, 1, 1, "2")
    with pytest.raises(ValueError, match=r"\(4, 6 or 8 dimensions\), got \[1, 1, 1, 1, 1, 1, 1, 1, 2, 1\]"):
        local_functional.local_conv(torch.zeros(1, 1, 1, 1, 1, 1), torch.zeros(1, 1, 1, 1, 1, 1, 1, 1, 2, 1))
    with pytest.raises(ValueError, match=r"\(4, 6 or 8 dimensions\), got \[2, 2\]"):
        local_functional.local_conv(torch.zeros(1, 2, 3), torch.zeros(2, 2))


def test_numpy_integers_are_accepted_as_sizes_and_channels() -> None:
    layer = LocallyConnected2d(np.int64(4), np.int32(6), input_size=(np.int64(5), 4), kernel_size=np.int16(3),
                               stride=np.int64(1), padding=np.int64(1), groups=np.int64(2), init_std=np.float32(0.1))
    plain = LocallyConnected2d(4, 6, (5, 4), 3, padding=1, groups=2)
    assert layer.weight.shape == plain.weight.shape and type(layer.in_channels) is int
    assert type(layer.groups) is int and layer.kernel_size == (3, 3)
    x = torch.randn(2, 4, 5, 4)
    y = local_functional.local_conv2d(x, layer.weight, layer.bias, np.int64(1), (np.int64(1), 1), groups=np.int64(2))
    torch.testing.assert_close(y, layer(x))
    lazy = LazyLocallyConnected2d(np.int64(6), np.int64(3), padding=np.int64(1))
    assert lazy(x).shape == (2, 6, 5, 4)
    arrays = LocallyConnected2d(4, 6, np.array([5, 4]), np.array([3, 3]), padding=np.array([1, 1]), groups=2)
    assert arrays.weight.shape == plain.weight.shape and arrays.padding == plain.padding  # as nn.Conv2d takes
    with pytest.raises(ValueError, match="out_channels"):
        LocallyConnected2d(4, np.float64(6), 5, 3)
    with pytest.raises(ValueError, match="groups"):
        LocallyConnected2d(4, 6, 5, 3, groups=np.bool_(True))


# ----------------------------------------------------------------------------------------------
# Memory kept between calls


def test_scratch_is_bounded_and_released_on_request() -> None:
    layer = LocallyConnected2d(8, 8, 6, 3, padding=1)
    layer(torch.randn(4, 8, 6, 6, requires_grad=True)).sum().backward()
    held = local_portable.scratch_bytes()
    assert 0 < held <= local_portable.SCRATCH_MAX_BYTES
    assert local_portable.release_scratch() == held and local_portable.scratch_bytes() == 0
    layer(torch.randn(4, 8, 6, 6))  # the next call allocates again
    assert local_portable.scratch_bytes() > 0


def test_taps_last_weight_buffer_goes_with_the_layer() -> None:
    gc.collect()
    start = local_ops.weight_buffer_bytes()
    layer = LocallyConnected2d(8, 8, 6, 3, padding=1)
    layer(torch.randn(4, 8, 6, 6, requires_grad=True)).sum().backward()
    assert local_ops.weight_buffer_bytes() == start + layer.weight.numel() * 4
    del layer
    gc.collect()
    assert local_ops.weight_buffer_bytes() == start


def test_weight_buffers_released_on_request_and_a_pending_backward_still_right() -> None:
    layer = make_layer(2, "direct")
    x = inputs(2).requires_grad_()
    y = layer(x)  # its copy stays alive with its graph
    assert local_ops.weight_buffer_bytes() >= layer.weight.numel() * 8
    assert local_ops.release_weight_buffers() >= layer.weight.numel() * 8
    assert local_ops.weight_buffer_bytes() == 0
    layer(inputs(2, seed=5).requires_grad_())  # allocates again
    grad = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, layer.weight), grad)
    for g, w in zip(got, _reference_grads(layer, x, layer.weight, grad)):
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-11)


def test_benchmark_times_the_old_and_the_new_layout_side_by_side() -> None:
    # benchmarks/local_layer.py --before: local-portable (contiguous parameter) and local-portable-taps-last
    # (the parameter as the CPU layers stored it before issue 23) compute the same step
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "local_layer.py"
    spec = importlib.util.spec_from_file_location("bench_local_layer_23", path)
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    assert bench.local_methods("cpu", before=True) == ["local-portable", "local-portable-taps-last",
                                                       "local-portable-bmm"]
    assert set(bench.BEFORE_METHODS) == {"local-portable-taps-last", "local-portable-bmm"}
    shape = bench.Shape("tiny", 3, 4, 5, 6)
    after, before, bmm = (bench.build_step(m, shape, "cpu")
                          for m in ("local-portable", "local-portable-taps-last", "local-portable-bmm"))
    after(), before(), bmm()
    assert after.leaves[1].is_contiguous() and not before.leaves[1].is_contiguous()
    for a, b, c in zip(after.leaves, before.leaves, bmm.leaves):
        assert torch.equal(a, b) and torch.equal(a, c)
        # the taps-last parameter: the same maths; the bmm forward: another summation order
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.grad, c.grad, rtol=1e-5, atol=1e-5)
    records = [{"shape": "tiny", "method": m, "seconds": s} for m, s in
               (("local-portable", 3.0), ("local-portable-taps-last", 2.0), ("local-portable-bmm", 4.0))]
    assert bench.before_after_line(records, "local-portable-taps-last").endswith("tiny 1.50x")
    assert bench.before_after_line(records, "local-portable-bmm").endswith("tiny 0.75x")
    assert bench.kept_bytes() >= local_portable.scratch_bytes() > 0
