"""cuda-convnet's update rule as a ``torch.optim.Optimizer``.

Per parameter tensor ``W`` with group hyperparameters ``lr`` (epsW/epsB), ``momentum`` (momW/momB)
and ``wc`` (weight decay; 0 for biases), given the gradient of the minibatch-mean loss::

    inc = momentum * inc - wc * lr * W - lr * grad
    W  += inc                                          (nesterov: W += momentum * inc - wc * lr * W - lr * grad)

``inc`` is kept in ``state[p]["momentum_buffer"]``. A group with ``nesterov=True`` takes Nesterov's step,
the same as ``torch.optim.SGD(nesterov=True)`` at a constant rate. It already contains the learning rate of the
steps that made it, so changing ``lr`` between steps (a schedule phase) scales only the new terms,
exactly as cuda-convnet. With ``momentum=0, wc=0`` this is plain SGD (the TF tutorial's optimizer).
"""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ..models.base import GroupSpec


def group_dicts(groups: Iterable[GroupSpec]) -> list[dict[str, Any]]:
    """``Classifier.param_groups()`` as torch param-group dicts (``params, lr, momentum, wc, name``)."""
    return [{"params": list(g.params), "lr": g.lr, "momentum": g.momentum, "wc": g.wc, "name": g.name}
            for g in groups]


class ConvNetSGD(torch.optim.Optimizer):
    """SGD with momentum and in-update L2 decay, in cuda-convnet's form (see module docstring).

    ``params``: parameters, torch param-group dicts (keys ``lr``, ``momentum``, ``wc``; others such as
    ``name`` are kept), or :class:`GroupSpec` s. ``lr``/``momentum``/``wc`` are the defaults for
    groups that do not set them.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.01, momentum: float = 0.0, wc: float = 0.0) -> None:
        params = list(params)
        if params and isinstance(params[0], GroupSpec):
            params = group_dicts(params)
        for name, value in (("lr", lr), ("momentum", momentum), ("wc", wc)):
            _check_hyper(name, value)
        super().__init__(params, {"lr": lr, "momentum": momentum, "wc": wc})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for name in ("lr", "momentum", "wc"):
            if name in param_group:
                _check_hyper(name, param_group[name])
        _undecorated(torch.optim.Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _undecorated(torch.optim.Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _undecorated(torch.optim.Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _undecorated(torch.optim.Optimizer.load_state_dict)(self, state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum, wc = group["lr"], group["momentum"], group["wc"]
            nesterov = group.get("nesterov", False)
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("ConvNetSGD does not support sparse gradients")
                state = self.state[p]
                inc = state.get("momentum_buffer")
                if inc is None:
                    inc = state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                # -lr * (grad + wc * W), in the fused step's order of operations (fused_step.py)
                step = (p.grad.add(p, alpha=wc) if wc else p.grad.clone()).mul_(-lr)
                inc.mul_(momentum).add_(step)
                p.add_(step.add_(inc, alpha=momentum) if nesterov else inc)
        return loss


def _undecorated(method: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` without torch's ``_disable_dynamo`` wrapper while torch._dynamo is not loaded.

    torch.optim wraps ``add_param_group``, ``zero_grad`` and ``state_dict`` in ``torch._disable_dynamo``,
    which imports torch._dynamo at the first call (1-2 s of CPU, most of a short doctor run's optimizer
    cost) only so that dynamo will not trace them. Before torch._dynamo is imported nothing can be
    tracing, so the plain function is equivalent; once it is (``--compile``), the wrapper is kept.
    """
    if "torch._dynamo" in sys.modules:
        return method
    return getattr(method, "__wrapped__", method)


def _check_hyper(name: str, value: Any) -> None:
    if isinstance(value, torch.Tensor) or not isinstance(value, (int, float)) or not value >= 0.0:
        raise ValueError(f"ConvNetSGD: {name} must be a number >= 0, got {value!r}")
