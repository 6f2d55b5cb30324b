"""The locally connected convolution and its two gradients as differentiable ops (1-D/2-D/3-D).

Three functions of plain tensors, each bilinear in its two tensor arguments::

    forward(x, w)        y  = A_w x               (+ bias)
    grad_input(gy, w)    gx = A_w^T gy
    grad_weight(gy, x)   gw = d<gy, A_w x>/dw

so every derivative of one is a call of another: the vector-Jacobian products of ``forward`` are
``grad_input`` and ``grad_weight``; those of ``grad_input(gy, w)`` against a cotangent ``v`` are
``forward(v, w)`` and ``grad_weight(gy, v)``; those of ``grad_weight(gy, x)`` against ``v`` are
``forward(x, v)`` and ``grad_input(gy, v)``; and the JVP of each is two calls of itself. Gradients of
any order are therefore exact, through the same kernels.

Each function exists twice, with the same formulas (:func:`_vjp_*`, :func:`_jvp_*`, :func:`_vmap_*`):

* ``torch.library`` custom ops ``localconv::local_conv{,_grad_input,_grad_weight}`` with fake
  (meta) implementations, ``register_autograd`` and ``register_vmap``: what ``torch.compile``,
  ``torch.export`` and AOT autograd see (one opaque call per layer; the chunk loops live inside).
* ``torch.autograd.Function`` s with ``setup_context``, ``backward``, ``jvp`` and ``vmap``: what eager
  mode and ``torch.func`` (``grad``, ``vmap``, ``jacrev``, ``jvp``, ``jacfwd``) use. (Custom ops have no
  forward-mode AD in torch, and their dispatch costs tens of microseconds per call.)

:func:`apply` picks: the ONNX decomposition while exporting to ONNX, the custom op while compiling or
exporting, the Function otherwise.
"""
# No "from __future__ import annotations": torch.library reads the op signatures at runtime.
import math
import sys
import threading
import warnings
from typing import Callable, List, NamedTuple, Optional

import torch
import torch.autograd.forward_ad as forward_ad
import torch.utils.weak

from . import local_onednn, local_portable

Tensor = torch.Tensor


class Spec(NamedTuple):
    """Static arguments of one call (all ints): per spatial dimension stride, padding (before, after)
    pairs flattened, dilation; and the number of groups."""

    stride: tuple
    padding: tuple  # (before_0, after_0, before_1, after_1, ...)
    dilation: tuple
    groups: int


def _geometry(x_shape, weight_shape, spec: Spec) -> local_portable.Geometry:  # noqa: ANN001
    return local_portable.geometry(x_shape, weight_shape, spec.stride, spec.padding, spec.dilation, spec.groups)


def _format(channels_last: bool, dims: int) -> torch.memory_format:
    if not channels_last:
        return torch.contiguous_format
    return torch.channels_last if dims == 2 else torch.channels_last_3d


def _is_channels_last(x: Tensor) -> bool:
    return local_portable.channels_last_format(x) != torch.contiguous_format


# ----------------------------------------------------------------------------------------------
# The kernels behind every path (plain tensors, no autograd): portable or Triton.


def _triton():  # noqa: ANN202
    from . import triton_local  # imported on first use: localconv works without triton

    return triton_local


def _legacy_batched(*tensors: Optional[Tensor]) -> bool:
    """Whether a tensor is batched by torch's legacy vmap (``autograd.grad(is_grads_batched=True)``,
    ``autograd.functional.jacobian/hessian(vectorize=True)``), which runs the Functions on batched
    tensors (no vmap rule) and refuses the kernels' writes into plain work buffers."""
    check = getattr(torch._C._functorch, "is_legacy_batchedtensor", None)
    return check is not None and any(t is not None and check(t) for t in tensors)


def _columns(x: Tensor, geo: local_portable.Geometry, spec: Spec) -> Tensor:
    """``x``'s windows as :func:`decomposed` gathers them: ``[L, g, N, K/g]`` in (c, taps) order."""
    d, g, (n, c) = geo.dims, geo.groups, geo.input_shape[:2]
    pad_spec = [p for dim in reversed(range(d)) for p in (spec.padding[2 * dim], spec.padding[2 * dim + 1])]
    xp = torch.nn.functional.pad(x, pad_spec) if any(pad_spec) else x
    padded = [s + spec.padding[2 * i] + spec.padding[2 * i + 1] for i, s in enumerate(geo.input_shape[2:])]
    index = _window_index(geo, padded).to(x.device)
    cols = torch.index_select(xp.reshape(n, c, math.prod(padded)), 2, index)  # [N, C, L * taps]
    cols = cols.reshape(n, g, c // g, geo.positions, geo.taps).permute(3, 1, 0, 2, 4)
    return cols.reshape(geo.positions, g, n, geo.group_k)


def _grad_columns(grad_out: Tensor, geo: local_portable.Geometry) -> Tensor:
    """``grad_out [N, O, *out]`` as ``[L, g, N, O/g]`` (the inverse of :func:`decomposed`'s output permute)."""
    g, o, n = geo.groups, geo.out_channels, geo.input_shape[0]
    return grad_out.reshape(n, g, o // g, geo.positions).permute(3, 1, 0, 2)


def _decomposed_grad_weight(grad_out: Tensor, x: Tensor, weight_shape: List[int], spec: Spec) -> Tensor:
    """The weight gradient in plain torch ops (as :func:`decomposed`), which the legacy vmap batches."""
    geo = _geometry(x.shape, weight_shape, spec)
    gw = torch.matmul(_columns(x, geo, spec).transpose(2, 3), _grad_columns(grad_out, geo))  # [L, g, K/g, O/g]
    return gw.transpose(2, 3).reshape(weight_shape)


def _decomposed_grad_input(grad_out: Tensor, weight: Tensor, input_shape: List[int], spec: Spec) -> Tensor:
    """The input gradient in plain torch ops (the transpose of :func:`decomposed`'s gather)."""
    geo = _geometry(input_shape, weight.shape, spec)
    g, o, (n, c) = geo.groups, geo.out_channels, geo.input_shape[:2]
    w = weight.reshape(geo.positions, g, o // g, geo.group_k)  # [L, g, O/g, K/g]
    cols = torch.matmul(_grad_columns(grad_out, geo), w)  # [L, g, N, K/g]
    cols = cols.reshape(geo.positions, g, n, c // g, geo.taps).permute(2, 1, 3, 0, 4)
    cols = cols.reshape(n, c, geo.positions * geo.taps)
    padded = [s + spec.padding[2 * i] + spec.padding[2 * i + 1] for i, s in enumerate(input_shape[2:])]
    grid = torch.zeros((n, c, math.prod(padded)), dtype=grad_out.dtype, device=grad_out.device)
    grid = grid.index_add(2, _window_index(geo, padded).to(grad_out.device), cols).reshape(n, c, *padded)
    crop = tuple(slice(spec.padding[2 * i], spec.padding[2 * i] + s) for i, s in enumerate(input_shape[2:]))
    return grid[(slice(None), slice(None), *crop)]


def forward_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], spec: Spec, backend: str,
                 padded_out: Optional[Tensor] = None) -> Tensor:
    """``padded_out``: where the portable forward builds its padded input, for the backward to reuse."""
    if _legacy_batched(x, weight, bias):
        return decomposed(x, weight, bias, spec)
    if backend == "triton":
        if x.shape[0] == 0:  # an empty batch: no kernel launch (the portable forward checks itself)
            return local_portable.empty_output(x, _geometry(x.shape, weight.shape, spec),
                                               local_portable.channels_last_format(x))
        return _triton().forward(x, weight, bias, spec)
    geo = _geometry(x.shape, weight.shape, spec)
    fmt = local_portable.channels_last_format(x)
    if local_onednn.usable(x):  # CPU float32: the same GEMMs as oneDNN convolutions (faster there)
        return local_onednn.forward(x, weight, bias, geo, fmt, padded_out=padded_out)
    return local_portable.forward(x, weight, bias, geo, fmt, padded_out=padded_out)


def grad_input_impl(grad_out: Tensor, weight: Tensor, input_shape: List[int], spec: Spec, backend: str,
                    channels_last: bool) -> Tensor:
    if _legacy_batched(grad_out, weight):
        return _decomposed_grad_input(grad_out, weight, list(input_shape), spec)
    fmt = _format(channels_last, len(input_shape) - 2)
    if backend == "triton":
        if input_shape[0] == 0:
            geo = _geometry(input_shape, weight.shape, spec)
            return local_portable.empty_batch_grads(grad_out, geo, True, False, fmt)[0]
        return _triton().grad_input(grad_out, weight, input_shape, spec, fmt)
    return local_portable.grad_input(grad_out, weight, _geometry(input_shape, weight.shape, spec), fmt)


def grad_weight_impl(grad_out: Tensor, x: Tensor, weight_shape: List[int], spec: Spec, backend: str) -> Tensor:
    if _legacy_batched(grad_out, x):
        return _decomposed_grad_weight(grad_out, x, list(weight_shape), spec)
    if backend == "triton":
        if x.shape[0] == 0:
            geo = _geometry(x.shape, weight_shape, spec)
            return local_portable.empty_batch_grads(grad_out, geo, False, True, torch.contiguous_format)[1]
        return _triton().grad_weight(grad_out, x, weight_shape, spec)
    return local_portable.grad_weight(grad_out, x, _geometry(x.shape, weight_shape, spec))


# ----------------------------------------------------------------------------------------------
# Formulas shared by the custom ops and the autograd Functions. ``ops`` is a triple of callables
# (forward, grad_input, grad_weight) with the impl signatures above: the custom ops or the Functions.


class Ops(NamedTuple):
    forward: Callable
    grad_input: Callable
    grad_weight: Callable


def bias_grad(grad_out: Tensor, bias_dim: int) -> Tensor:
    """Untied bias ``[O, *out]``: sum over the batch; shared ``[O]``: over the batch and positions."""
    if bias_dim == 1:
        return grad_out.sum([0, *range(2, grad_out.dim())])
    return grad_out.sum(0)


def _vjp_forward(ops: Ops, grad_out: Tensor, x: Tensor, weight: Tensor, bias_dim: Optional[int], spec: Spec,
                 backend: str, needs: tuple) -> tuple:
    # bias_dim: None without a bias, 1 shared, else untied
    gx = gw = gb = None
    if needs[0]:
        gx = ops.grad_input(grad_out, weight, list(x.shape), spec, backend, _is_channels_last(x))
    if needs[1]:
        gw = ops.grad_weight(grad_out, x, list(weight.shape), spec, backend)
    if bias_dim is not None and needs[2]:
        gb = bias_grad(grad_out, bias_dim)
    return gx, gw, gb


def _vjp_grad_input(ops: Ops, v: Tensor, grad_out: Tensor, weight: Tensor, spec: Spec, backend: str,
                    needs: tuple) -> tuple:
    # gx = A_w^T gy:  d<v, gx>/dgy = A_w v;  d<v, gx>/dw = grad_weight(gy, v).
    g_gy = ops.forward(v, weight, None, spec, backend) if needs[0] else None
    g_w = ops.grad_weight(grad_out, v, list(weight.shape), spec, backend) if needs[1] else None
    return g_gy, g_w


def _vjp_grad_weight(ops: Ops, v: Tensor, grad_out: Tensor, x: Tensor, spec: Spec, backend: str,
                     needs: tuple) -> tuple:
    # gw = d<gy, A_w x>/dw:  d<v, gw>/dgy = A_v x;  d<v, gw>/dx = A_v^T gy.
    g_gy = ops.forward(x, v, None, spec, backend) if needs[0] else None
    g_x = ops.grad_input(grad_out, v, list(x.shape), spec, backend, _is_channels_last(x)) if needs[1] else None
    return g_gy, g_x


def _add(a: Optional[Tensor], b: Optional[Tensor]) -> Optional[Tensor]:
    return b if a is None else (a if b is None else a + b)


def _jvp_forward(ops: Ops, x: Tensor, weight: Tensor, dx: Optional[Tensor],
                 dw: Optional[Tensor], db: Optional[Tensor], spec: Spec, backend: str) -> Tensor:
    out = ops.forward(dx, weight, None, spec, backend) if dx is not None else None
    out = _add(out, ops.forward(x, dw, None, spec, backend) if dw is not None else None)
    if db is not None:
        d = len(spec.stride)
        db = db.view(-1, *[1] * d) if db.dim() == 1 else db
        out = _add(out, db.expand(x.shape[0], weight.shape[d], *weight.shape[:d]))
    if out is None:
        raise RuntimeError("local_conv jvp: no tangent given")
    return out


# vmap: a batch dimension only on the input of forward (or on the output gradient of grad_input) folds
# into the images (one call); any other batching loops over the batch (correct, and rare: vmap over
# weights, per-sample weight gradients).


def _move(t: Optional[Tensor], dim: Optional[int], size: int) -> Optional[Tensor]:
    if t is None:
        return None
    return t.movedim(dim, 0) if dim is not None else t.expand(size, *t.shape)


def _loop(fn: Callable, size: int, tensors: list, dims: list) -> tuple:
    moved = [_move(t, d, size) for t, d in zip(tensors, dims)]
    outs = [fn(*[m[i] if m is not None else None for m in moved]) for i in range(size)]
    return torch.stack(outs), 0


def _fold(fn: Callable, t: Tensor, dim: int) -> tuple:
    t = t.movedim(dim, 0)
    out = fn(t.reshape(-1, *t.shape[2:]))
    return out.view(t.shape[0], t.shape[1], *out.shape[1:]), 0


def _vmap_forward(ops: Ops, info, in_dims, x, weight, bias, spec, backend):  # noqa: ANN001, ANN202
    x_dim, w_dim, b_dim = in_dims[:3]
    if x_dim is not None and w_dim is None and b_dim is None:
        return _fold(lambda xs: ops.forward(xs, weight, bias, spec, backend), x, x_dim)
    return _loop(lambda xi, wi, bi: ops.forward(xi, wi, bi, spec, backend), info.batch_size,
                 [x, weight, bias], [x_dim, w_dim, b_dim])


def _vmap_grad_input(ops: Ops, info, in_dims, grad_out, weight, input_shape, spec, backend,  # noqa: ANN001, ANN202
                     channels_last):
    g_dim, w_dim = in_dims[:2]
    if w_dim is None:
        shape = [-1, *input_shape[1:]]
        return _fold(lambda gs: ops.grad_input(gs, weight, [gs.shape[0], *shape[1:]], spec, backend, channels_last),
                     grad_out, g_dim)
    return _loop(lambda gi, wi: ops.grad_input(gi, wi, input_shape, spec, backend, channels_last),
                 info.batch_size, [grad_out, weight], [g_dim, w_dim])


def _vmap_grad_weight(ops: Ops, info, in_dims, grad_out, x, weight_shape, spec, backend):  # noqa: ANN001, ANN202
    g_dim, x_dim = in_dims[:2]
    return _loop(lambda gi, xi: ops.grad_weight(gi, xi, weight_shape, spec, backend), info.batch_size,
                 [grad_out, x], [g_dim, x_dim])


# ----------------------------------------------------------------------------------------------
# Custom ops (torch.compile, torch.export). Static arguments travel as int lists.


def _spec(stride: List[int], padding: List[int], dilation: List[int], groups: int) -> Spec:
    return Spec(tuple(stride), tuple(padding), tuple(dilation), int(groups))


@torch.library.custom_op("localconv::local_conv", mutates_args=())
def local_conv_op(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, backend: str) -> Tensor:
    return forward_impl(x, weight, bias, _spec(stride, padding, dilation, groups), backend)


@torch.library.custom_op("localconv::local_conv_grad_input", mutates_args=())
def grad_input_op(grad_out: Tensor, weight: Tensor, input_shape: List[int], stride: List[int], padding: List[int],
                  dilation: List[int], groups: int, backend: str, channels_last: bool) -> Tensor:
    return grad_input_impl(grad_out, weight, input_shape, _spec(stride, padding, dilation, groups), backend,
                           channels_last)


@torch.library.custom_op("localconv::local_conv_grad_weight", mutates_args=())
def grad_weight_op(grad_out: Tensor, x: Tensor, weight_shape: List[int], stride: List[int], padding: List[int],
                   dilation: List[int], groups: int, backend: str) -> Tensor:
    return grad_weight_impl(grad_out, x, weight_shape, _spec(stride, padding, dilation, groups), backend)


@local_conv_op.register_fake
def _(x, weight, bias, stride, padding, dilation, groups, backend):  # noqa: ANN001, ANN202
    d = x.dim() - 2
    fmt = _format(_is_channels_last(x), d)
    return torch.empty((x.shape[0], weight.shape[d], *weight.shape[:d]), dtype=x.dtype, device=x.device,
                       memory_format=fmt)


@grad_input_op.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, groups, backend, channels_last):  # noqa: ANN001, ANN202
    fmt = _format(channels_last, len(input_shape) - 2)
    return torch.empty(input_shape, dtype=grad_out.dtype, device=grad_out.device, memory_format=fmt)


@grad_weight_op.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, groups, backend):  # noqa: ANN001, ANN202
    return torch.empty(weight_shape, dtype=x.dtype, device=x.device)


def _op_forward(x, weight, bias, spec: Spec, backend):  # noqa: ANN001, ANN202
    return local_conv_op(x, weight, bias, list(spec.stride), list(spec.padding), list(spec.dilation), spec.groups,
                         backend)


def _op_grad_input(grad_out, weight, input_shape, spec: Spec, backend, channels_last):  # noqa: ANN001, ANN202
    return grad_input_op(grad_out, weight, list(input_shape), list(spec.stride), list(spec.padding),
                         list(spec.dilation), spec.groups, backend, channels_last)


def _op_grad_weight(grad_out, x, weight_shape, spec: Spec, backend):  # noqa: ANN001, ANN202
    return grad_weight_op(grad_out, x, list(weight_shape), list(spec.stride), list(spec.padding),
                          list(spec.dilation), spec.groups, backend)


OPS = Ops(_op_forward, _op_grad_input, _op_grad_weight)


def _setup_forward(ctx, inputs, output):  # noqa: ANN001, ANN202
    x, weight, bias, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.spec, ctx.backend = _spec(stride, padding, dilation, groups), backend
    ctx.bias_dim = None if bias is None else bias.dim()


def _backward_forward(ctx, grad_out):  # noqa: ANN001, ANN202
    x, weight = ctx.saved_tensors
    grads = _vjp_forward(OPS, grad_out, x, weight, ctx.bias_dim, ctx.spec, ctx.backend, ctx.needs_input_grad[:3])
    return (*grads, None, None, None, None, None)


def _setup_grad_input(ctx, inputs, output):  # noqa: ANN001, ANN202
    grad_out, weight, _, stride, padding, dilation, groups, backend, _ = inputs
    ctx.save_for_backward(grad_out, weight)
    ctx.spec, ctx.backend = _spec(stride, padding, dilation, groups), backend


def _backward_grad_input(ctx, v):  # noqa: ANN001, ANN202
    grad_out, weight = ctx.saved_tensors
    grads = _vjp_grad_input(OPS, v, grad_out, weight, ctx.spec, ctx.backend, ctx.needs_input_grad[:2])
    return (*grads, None, None, None, None, None, None, None)


def _setup_grad_weight(ctx, inputs, output):  # noqa: ANN001, ANN202
    grad_out, x, _, stride, padding, dilation, groups, backend = inputs
    ctx.save_for_backward(grad_out, x)
    ctx.spec, ctx.backend = _spec(stride, padding, dilation, groups), backend


def _backward_grad_weight(ctx, v):  # noqa: ANN001, ANN202
    grad_out, x = ctx.saved_tensors
    grads = _vjp_grad_weight(OPS, v, grad_out, x, ctx.spec, ctx.backend, ctx.needs_input_grad[:2])
    return (*grads, None, None, None, None, None, None)


local_conv_op.register_autograd(_backward_forward, setup_context=_setup_forward)
grad_input_op.register_autograd(_backward_grad_input, setup_context=_setup_grad_input)
grad_weight_op.register_autograd(_backward_grad_weight, setup_context=_setup_grad_weight)



def _route_forward_ad(op, function) -> None:  # noqa: ANN001
    """Forward-mode AD on the raw custom op: torch's generated Autograd kernel of a custom op ignores
    forward tangents (an exported program's ``jvp`` came back zero, silently). Dual tensors
    (``torch.autograd.forward_ad``) go through the autograd Function (which has ``jvp``) instead;
    ``torch.func.jvp`` of the raw op raises (the Function cannot be called at that dispatch level).
    Uses torch's private ``make_autograd_impl``: without it (another torch version), the op keeps
    torch's kernel."""
    try:
        from torch._library.autograd import make_autograd_impl

        generated = make_autograd_impl(op._opoverload, op)
        library, name = op._lib, op._name
    except (ImportError, AttributeError):
        return

    def kernel(keyset, *args):  # noqa: ANN001, ANN202
        if forward_ad._current_level >= 0 and any(
                isinstance(a, Tensor) and forward_ad.unpack_dual(a).tangent is not None for a in args):
            if torch._C._functorch.peek_interpreter_stack() is not None:  # torch.func.jvp of the raw op
                raise NotImplementedError(
                    f"forward-mode AD (torch.func.jvp/jacfwd) through the raw custom op {op._qualname} is not "
                    "supported (torch gives custom ops no jvp rule); use the localconv layers or "
                    "localconv.nn.functional.local_conv* in eager mode, whose autograd Functions have one")
            return function(*args)  # dual tensors (torch.autograd.forward_ad): the Function's jvp
        return generated(keyset, *args)

    with warnings.catch_warnings():  # "overriding a previously registered kernel": ours, on purpose
        warnings.simplefilter("ignore")
        library.impl(name, kernel, "Autograd", with_keyset=True)


if hasattr(torch.library, "register_vmap"):  # torch >= 2.4
    @local_conv_op.register_vmap
    def _(info, in_dims, x, weight, bias, stride, padding, dilation, groups, backend):  # noqa: ANN001, ANN202
        return _vmap_forward(OPS, info, in_dims, x, weight, bias, _spec(stride, padding, dilation, groups), backend)

    @grad_input_op.register_vmap
    def _(info, in_dims, grad_out, weight, input_shape, stride, padding, dilation, groups, backend,  # noqa: ANN001, ANN202
          channels_last):
        return _vmap_grad_input(OPS, info, in_dims, grad_out, weight, input_shape,
                                _spec(stride, padding, dilation, groups), backend, channels_last)

    @grad_weight_op.register_vmap
    def _(info, in_dims, grad_out, x, weight_shape, stride, padding, dilation, groups, backend):  # noqa: ANN001, ANN202
        return _vmap_grad_weight(OPS, info, in_dims, grad_out, x, weight_shape,
                                 _spec(stride, padding, dilation, groups), backend)


# ----------------------------------------------------------------------------------------------
# autograd.Functions (eager mode, torch.func). The non-tensor arguments are (spec, backend[, ...]).


# The eager portable forward hands the padded channels-last input it built to its setup_context, for the
# backward (which would build it again: a transposing copy of the input, ~6% of a cc-11pct local layer's
# step), and on the CPU a copy of a contiguous weight in the GEMMs' (taps-last) order, which the forward
# and the backward then read without per-line transposes. ``keep``: set by apply() around a forward whose
# backward will run; ``padded``: (x, padded x, taps-last weight or None).
_handoff = threading.local()

# The taps-last copy goes into a buffer kept per weight tensor (weakly: freed with the weight), so that
# each step reuses the same memory (a fresh multi-MiB buffer costs a page fault per 4 KiB). Only the memory
# is reused: the values are copied again on every forward, because ``weight._version`` does not see
# ``weight.data`` writes or ``param.data = ...`` (torch.nn.utils.vector_to_parameters), so a cache of the
# values keyed on it could silently compute with stale weights.
# The buffer is shared by every graph of the weight, so each forward's copy gets a new generation number:
# a backward whose forward's copy was since overwritten (another forward of the same weight before it:
# siamese use, retained graphs, other threads) computes with the weight autograd saved instead. Under
# saved-tensor hooks (checkpointing, offloading, ``allow_mutation_on_saved_tensors``) no copy is kept at
# all (see apply): the backward reads what the hooks give back.
_weight_buffers: "torch.utils.weak.WeakIdKeyDictionary" = torch.utils.weak.WeakIdKeyDictionary()
_weight_buffers_lock = threading.Lock()


class _WeightBuffer:
    """A weight's taps-last buffer and the generation of the copy it holds."""

    __slots__ = ("buffer", "generation")

    def __init__(self, buffer: Tensor) -> None:
        self.buffer, self.generation = buffer, 0


class _FastWeight(NamedTuple):
    """The taps-last copy of one forward: ``tensor`` (a view of ``entry.buffer``) is valid while
    ``entry.generation == generation``."""
    tensor: Tensor
    entry: _WeightBuffer
    generation: int

    def current(self) -> bool:
        return self.entry.generation == self.generation


def weight_buffer_bytes() -> int:
    """Bytes held by the taps-last weight buffers of the live weights (see :func:`_taps_last_copy`)."""
    with _weight_buffers_lock:
        return sum(e.buffer.numel() * e.buffer.element_size() for e in list(_weight_buffers.values()))


def release_weight_buffers() -> int:
    """Drop the taps-last weight buffers of all weights (e.g. a trained model kept for inference, whose
    no-grad forwards use none); returns the bytes dropped. A graph not yet backpropagated keeps its own
    copy alive until then; the next forward with gradients allocates again."""
    with _weight_buffers_lock:
        released = sum(e.buffer.numel() * e.buffer.element_size() for e in list(_weight_buffers.values()))
        _weight_buffers.clear()
    return released


def _taps_last_copy(weight: Tensor, dims: int) -> _FastWeight:
    """A taps-last copy of ``weight`` (same shape and values) in the weight's reused buffer."""
    with _weight_buffers_lock:
        entry = _weight_buffers.get(weight)
        if entry is None or entry.buffer.numel() != weight.numel() or entry.buffer.dtype != weight.dtype:
            with torch.inference_mode(False):  # a normal tensor: usable in and out of inference mode
                entry = _WeightBuffer(torch.empty(weight.numel(), dtype=weight.dtype, device=weight.device))
            _weight_buffers[weight] = entry
        # a new generation before the copy: a backward of an earlier copy no longer trusts the buffer
        entry.generation += 1
        generation = entry.generation
    return _FastWeight(local_portable.taps_last_weight(weight.detach(), dims, out=entry.buffer), entry, generation)


def _fast_weight(x: Tensor, weight: Tensor, spec: Spec) -> Optional[_FastWeight]:
    """The taps-last copy the eager CPU portable path computes with, or None (weight used as it is)."""
    dims = len(spec.stride)
    if x.device.type != "cpu" or local_portable.is_taps_last(weight, dims) or x.shape[0] == 0:
        return None
    return _taps_last_copy(weight, dims)


class _Forward(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, spec, backend):  # noqa: ANN001, ANN205
        if backend != "portable" or not getattr(_handoff, "keep", False) or _legacy_batched(x, weight):
            return forward_impl(x, weight, bias, spec, backend)
        padded = x.new_empty(local_portable.padded_shape(_geometry(x.shape, weight.shape, spec)))
        fast = _fast_weight(x, weight, spec)
        _handoff.padded = (x, padded, fast)
        return forward_impl(x, weight if fast is None else fast.tensor, bias, spec, backend, padded_out=padded)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
        x, weight, bias, spec, backend = inputs
        ctx.save_for_backward(x, weight)  # only these: the bias gradient needs no saved tensor
        ctx.save_for_forward(x, weight)
        ctx.spec, ctx.backend = spec, backend
        ctx.bias_dim = None if bias is None else bias.dim()
        kept, _handoff.padded = getattr(_handoff, "padded", None), None
        # x as it was (a private copy) and the weight's taps-last copy (in the weight's buffer, rewritten by
        # each forward with the weight's current values: the backward checks its generation); x and the
        # weight themselves are checked by autograd's saved-tensor version counters, so an in-place change
        # before the backward is refused
        ctx.padded, ctx.fast_weight = (kept[1], kept[2]) if kept is not None and kept[0] is x else (None, None)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad[:3]
        if (ctx.backend == "portable" and (needs[0] or needs[1]) and not torch.is_grad_enabled()
                and not _legacy_batched(grad_out)):
            # First-order backward (no create_graph): the gradients in one pass over shared buffers,
            # the weight's in its memory layout; the same GEMMs as the differentiable path, which
            # higher-order gradients take.
            geo = _geometry(x.shape, weight.shape, ctx.spec)
            fast = ctx.fast_weight  # the forward's taps-last copy, unless another forward overwrote it since
            fast = fast.tensor if fast is not None and fast.current() else weight
            # the gradient in the memory order of the parameter (autograd would copy it there)
            gx, gw = local_portable.backward(grad_out, x, fast, geo, needs[0], needs[1],
                                             local_portable.channels_last_format(x), padded=ctx.padded,
                                             grad_weight_taps_last=local_portable.is_taps_last(weight, geo.dims))
            ctx.padded = ctx.fast_weight = None
            gb = bias_grad(grad_out, ctx.bias_dim) if ctx.bias_dim is not None and needs[2] else None
            return gx, gw, gb, None, None
        return (*_vjp_forward(FUNCTIONS, grad_out, x, weight, ctx.bias_dim, ctx.spec, ctx.backend, needs),
                None, None)

    @staticmethod
    def jvp(ctx, dx, dw, db, *_):  # noqa: ANN001, ANN205
        x, weight = ctx.saved_tensors
        return _jvp_forward(FUNCTIONS, x, weight, dx, dw, db, ctx.spec, ctx.backend)

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, spec, backend):  # noqa: ANN001, ANN205
        return _vmap_forward(FUNCTIONS, info, in_dims, x, weight, bias, spec, backend)


class _GradInput(torch.autograd.Function):
    @staticmethod
    def forward(grad_out, weight, input_shape, spec, backend, channels_last):  # noqa: ANN001, ANN205
        return grad_input_impl(grad_out, weight, input_shape, spec, backend, channels_last)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
        grad_out, weight, _, spec, backend, _ = inputs
        ctx.save_for_backward(grad_out, weight)
        ctx.save_for_forward(grad_out, weight)
        ctx.spec, ctx.backend, ctx.inputs = spec, backend, inputs[2:]

    @staticmethod
    def backward(ctx, v):  # noqa: ANN001, ANN205
        grad_out, weight = ctx.saved_tensors
        return (*_vjp_grad_input(FUNCTIONS, v, grad_out, weight, ctx.spec, ctx.backend, ctx.needs_input_grad[:2]),
                None, None, None, None)

    @staticmethod
    def jvp(ctx, d_gy, d_w, *_):  # noqa: ANN001, ANN205
        grad_out, weight = ctx.saved_tensors
        input_shape, spec, backend, channels_last = ctx.inputs
        out = None
        if d_gy is not None:
            out = FUNCTIONS.grad_input(d_gy, weight, input_shape, spec, backend, channels_last)
        return _add(out, FUNCTIONS.grad_input(grad_out, d_w, input_shape, spec, backend, channels_last)
                    if d_w is not None else None)

    @staticmethod
    def vmap(info, in_dims, grad_out, weight, input_shape, spec, backend, channels_last):  # noqa: ANN001, ANN205
        return _vmap_grad_input(FUNCTIONS, info, in_dims, grad_out, weight, input_shape, spec, backend, channels_last)


class _GradWeight(torch.autograd.Function):
    @staticmethod
    def forward(grad_out, x, weight_shape, spec, backend):  # noqa: ANN001, ANN205
        return grad_weight_impl(grad_out, x, weight_shape, spec, backend)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ANN001, ANN205
        grad_out, x, weight_shape, spec, backend = inputs
        ctx.save_for_backward(grad_out, x)
        ctx.save_for_forward(grad_out, x)
        ctx.spec, ctx.backend, ctx.weight_shape = spec, backend, weight_shape

    @staticmethod
    def backward(ctx, v):  # noqa: ANN001, ANN205
        grad_out, x = ctx.saved_tensors
        return (*_vjp_grad_weight(FUNCTIONS, v, grad_out, x, ctx.spec, ctx.backend, ctx.needs_input_grad[:2]),
                None, None, None)

    @staticmethod
    def jvp(ctx, d_gy, d_x, *_):  # noqa: ANN001, ANN205
        grad_out, x = ctx.saved_tensors
        args = (ctx.weight_shape, ctx.spec, ctx.backend)
        out = FUNCTIONS.grad_weight(d_gy, x, *args) if d_gy is not None else None
        return _add(out, FUNCTIONS.grad_weight(grad_out, d_x, *args) if d_x is not None else None)

    @staticmethod
    def vmap(info, in_dims, grad_out, x, weight_shape, spec, backend):  # noqa: ANN001, ANN205
        return _vmap_grad_weight(FUNCTIONS, info, in_dims, grad_out, x, weight_shape, spec, backend)


FUNCTIONS = Ops(_Forward.apply, _GradInput.apply, _GradWeight.apply)

_route_forward_ad(local_conv_op, lambda x, weight, bias, stride, padding, dilation, groups, backend: _Forward.apply(
    x, weight, bias, _spec(stride, padding, dilation, groups), backend))
_route_forward_ad(grad_input_op, lambda grad_out, weight, input_shape, stride, padding, dilation, groups, backend,
                  channels_last: _GradInput.apply(grad_out, weight, list(input_shape),
                                                  _spec(stride, padding, dilation, groups), backend, channels_last))
_route_forward_ad(grad_weight_op, lambda grad_out, x, weight_shape, stride, padding, dilation, groups, backend:
                  _GradWeight.apply(grad_out, x, list(weight_shape), _spec(stride, padding, dilation, groups),
                                    backend))


# ----------------------------------------------------------------------------------------------
# ONNX: a decomposition into Pad, Gather, MatMul (both exporters; no custom op in the graph).


def _window_index(geo: local_portable.Geometry, padded: List[int]) -> Tensor:
    """Flat indices into the padded spatial grid: ``[L * prod(kernel)]``, positions major, then taps."""
    index = torch.zeros((), dtype=torch.long)
    for dim, (size, k, s, dl) in enumerate(zip(geo.out_size, geo.kernel, geo.stride, geo.dilation)):
        place = math.prod(padded[dim + 1:])
        term = (torch.arange(size) * s * place).view(size, 1) + (torch.arange(k) * dl * place).view(1, k)
        index = index.unsqueeze(-1).unsqueeze(-1) + term
    # index is [out_0, k_0, out_1, k_1, ...]: bring the positions first, then the taps
    d = geo.dims
    order = (*range(0, 2 * d, 2), *range(1, 2 * d, 2))
    return index.permute(order).reshape(-1)


def decomposed(x: Tensor, weight: Tensor, bias: Optional[Tensor], spec: Spec) -> Tensor:
    """The same function in standard ops only (for ONNX); memory: all columns at once."""
    geo = _geometry(x.shape, weight.shape, spec)
    d, g, o = geo.dims, geo.groups, geo.out_channels
    c = geo.input_shape[1]
    pad_spec = []
    for dim in reversed(range(d)):
        pad_spec += [spec.padding[2 * dim], spec.padding[2 * dim + 1]]
    xp = torch.nn.functional.pad(x, pad_spec) if any(pad_spec) else x
    padded = [s + spec.padding[2 * i] + spec.padding[2 * i + 1] for i, s in enumerate(geo.input_shape[2:])]
    index = _window_index(geo, padded)
    n = x.shape[0]  # explicit: a -1 would be ambiguous for an empty batch
    # reshape, not flatten: the legacy vmap (batched gradients) has no rule for flatten
    cols = torch.index_select(xp.reshape(n, c, math.prod(padded)), 2, index)  # [N, C, L * taps]
    cols = cols.reshape(n, g, c // g, geo.positions, geo.taps).permute(3, 1, 0, 2, 4)
    cols = cols.reshape(geo.positions, g, n, geo.group_k)  # [L, g, N, K/g] in (c, taps) order
    w = weight.reshape(geo.positions, g, o // g, geo.group_k).transpose(2, 3)  # [L, g, K/g, O/g]
    y = torch.matmul(cols, w)  # [L, g, N, O/g]
    y = y.permute(2, 1, 3, 0).reshape(n, o, *geo.out_size)
    if bias is not None:
        y = y + (bias.view(o, *[1] * d) if bias.dim() == 1 else bias)
    return y


# ----------------------------------------------------------------------------------------------


_saved_tensor_hooks = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks",
                              lambda ignore_is_tracing=False: None)


def apply(x: Tensor, weight: Tensor, bias: Optional[Tensor], spec: Spec, backend: str) -> Tensor:
    """The layer's computation through the path the context needs (see the module docstring)."""
    if "torch.onnx" in sys.modules and torch.onnx.is_in_onnx_export():  # no torch.onnx import otherwise
        return decomposed(x, weight, bias, spec)
    if torch.compiler.is_compiling():
        return _op_forward(x, weight, bias, spec, backend)
    # not under saved-tensor hooks (non-reentrant checkpointing, save_on_cpu, allow_mutation_on_saved_tensors):
    # the padded input and the weight's copy would bypass them (memory checkpointing means to free)
    _handoff.keep = (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)
                     and _saved_tensor_hooks(False) is None)
    try:
        return _Forward.apply(x, weight, bias, spec, backend)
    finally:
        # ``padded`` too: a forward that raised leaves its hand-off unclaimed (it holds x and buffers)
        _handoff.keep, _handoff.padded = False, None
