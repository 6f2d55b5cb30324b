"""cuda-convnet's neuron (activation) functions as ``nn.Module`` s.

``make_neuron(kind, params)`` builds one from cuda-convnet's name and its bracketed
parameters (``tanh[a,b]`` -> ``make_neuron("tanh", [a, b])``); :data:`NEURON_PARAMS`
lists the kinds and the parameters each takes. Where PyTorch has the exact function
(ReLU, Sigmoid, Softplus, Hardtanh) we use it.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

# kind -> names of its parameters, in the order they are written inside [...]
NEURON_PARAMS: dict[str, tuple[str, ...]] = {
    "ident": (),
    "relu": (),
    "logistic": (),
    "abs": (),
    "square": (),
    "sqrt": (),
    "softrelu": (),
    "tanh": ("a", "b"),
    "abstanh": ("a", "b"),
    "linear": ("a", "b"),
    "brelu": ("a",),
}

NEURON_FORMULAS: dict[str, str] = {
    "ident": "x",
    "relu": "max(0, x)",
    "logistic": "1 / (1 + e^-x)",
    "abs": "|x|",
    "square": "x^2",
    "sqrt": "sqrt(x)",
    "softrelu": "log(1 + e^x)",
    "tanh": "a * tanh(b * x)",
    "abstanh": "a * |tanh(b * x)|",
    "linear": "a * x + b",
    "brelu": "min(a, max(0, x))",
}


class Abs(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs()


class Square(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * x


class Sqrt(nn.Module):
    """``sqrt(x)``, as cuda-convnet: NaN for negative inputs (use it after a non-negative layer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sqrt()


class ScaledTanh(nn.Module):
    """``a * tanh(b * x)``; with ``absolute`` it is cuda-convnet's ``abstanh``: ``a * |tanh(b * x)|``."""

    def __init__(self, a: float, b: float, absolute: bool = False) -> None:
        super().__init__()
        self.a, self.b, self.absolute = float(a), float(b), absolute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.tanh(self.b * x)
        return self.a * (y.abs() if self.absolute else y)

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}" + (", absolute=True" if self.absolute else "")


class Affine(nn.Module):
    """cuda-convnet's ``linear[a,b]`` neuron: ``a * x + b`` with fixed scalars (no learned weights)."""

    def __init__(self, a: float, b: float) -> None:
        super().__init__()
        self.a, self.b = float(a), float(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a * x + self.b

    def extra_repr(self) -> str:
        return f"a={self.a}, b={self.b}"


def make_neuron(kind: str, params: Sequence[float] = ()) -> nn.Module:
    """The activation module for cuda-convnet neuron ``kind`` with its bracketed ``params``.

    Raises ``ValueError`` for an unknown kind or a wrong number of parameters.
    """
    if kind not in NEURON_PARAMS:
        raise ValueError(f"unknown neuron type {kind!r}; known: {', '.join(NEURON_PARAMS)}")
    names = NEURON_PARAMS[kind]
    if len(params) != len(names):
        form = f"{kind}[{','.join(names)}]" if names else kind
        raise ValueError(f"neuron {kind!r} takes {len(names)} parameter(s): write {form}")
    p = [float(v) for v in params]
    if kind == "ident":
        return nn.Identity()
    if kind == "relu":
        return nn.ReLU()
    if kind == "logistic":
        return nn.Sigmoid()
    if kind == "abs":
        return Abs()
    if kind == "square":
        return Square()
    if kind == "sqrt":
        return Sqrt()
    if kind == "softrelu":
        return nn.Softplus()  # log(1 + e^x), computed stably
    if kind in ("tanh", "abstanh"):
        return ScaledTanh(p[0], p[1], absolute=kind == "abstanh")
    if kind == "linear":
        return Affine(p[0], p[1])
    # brelu[a] = min(a, max(0, x)) = Hardtanh(0, a)
    if p[0] <= 0:
        raise ValueError(f"brelu[a] needs a > 0, got {p[0]}")
    return nn.Hardtanh(0.0, p[0])
