"""Forward hooks on a model's weight layers, and the locator of the first non-finite layer (torch only).

The layer monitor of :mod:`localconv.diagnostics.monitor` builds its statistics on :class:`LayerHooks`;
the training engine names where a NaN/Inf loss came from with them
(:func:`localconv.training.layer_hooks.first_nonfinite_layer`). They stand on torch alone, below both
(``training`` and ``diagnostics`` never import each other), so that the doctor works on any model, in
any training loop.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

# Modules whose class lives in these modules count as a layer's nonlinearity.
ACTIVATION_MODULES = ("torch.nn.modules.activation", "localconv.nn.neurons")


def is_activation(module: nn.Module) -> bool:
    return type(module).__module__ in ACTIVATION_MODULES and not any(True for _ in module.parameters())


def weight_params(module: nn.Module) -> list[nn.Parameter]:
    """The weight matrices / filter banks a module owns itself (``weight``, ``weight_1``...)."""
    return [p for p in module.parameters(recurse=False) if p.ndim >= 2]


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Named modules that own weights, in registration order."""
    return {name: m for name, m in model.named_modules() if name and weight_params(m)}


def checksum(t: torch.Tensor) -> torch.Tensor:
    """A float32 sum: non-finite exactly when ``t`` holds NaN/Inf (short of overflowing 3e38), and
    cheaper than ``isfinite(t).all()``, so it can run on every layer at every step."""
    return t.detach().sum(dtype=torch.float32)


class _Probe:
    """Hook state of one layer during one forward/backward."""

    __slots__ = ("inputs", "output", "act", "act_module", "grad_out", "grad_in", "finite")
    # ``finite``: a checksum of the outputs (see checksum), read only when the loss turns non-finite

    def __init__(self) -> None:
        self.inputs: list[torch.Tensor] = []
        self.output: torch.Tensor | None = None
        self.act: torch.Tensor | None = None
        self.act_module: nn.Module | None = None
        self.grad_out: torch.Tensor | None = None
        self.grad_in: torch.Tensor | None = None
        self.finite: torch.Tensor | None = None


class LayerHooks:
    """Forward hooks on a model's weight layers and activations; used by the monitor and the NaN locator.

    ``detail`` False: only each layer's finiteness is kept (cheap, every step); True: inputs,
    activations and their gradients are kept for :class:`LayerMonitor` to summarise.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = weight_layers(model)
        self.order: list[str] = []        # forward order, learned from the first forward
        self.probes: dict[str, _Probe] = {}
        self.detail = False
        self.logits: torch.Tensor | None = None
        self._current: str | None = None  # the weight layer whose nonlinearity is still to come
        self._handles: list[Any] = []
        for name, module in self.layers.items():
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name)))
            self._handles.append(module.register_forward_hook(self._post_hook(name)))
        for module in model.modules():
            if is_activation(module):
                self._handles.append(module.register_forward_hook(self._activation_hook))
        self._handles.append(model.register_forward_pre_hook(self._model_pre_hook))
        self._handles.append(model.register_forward_hook(self._model_hook))

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _active(self, module: nn.Module) -> bool:
        return module.training and torch.is_grad_enabled()

    def _model_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if self._active(module):
            self.probes = {}
            self._current = None

    def _model_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if self._active(module) and isinstance(output, torch.Tensor):
            self.logits = output.detach()
            self._current = None

    def _pre_hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            if not self._active(module):
                return
            if name not in self.order:
                self.order.append(name)
            probe = self.probes.setdefault(name, _Probe())
            self._current = name
            if self.detail:
                inputs = [a for a in args if isinstance(a, torch.Tensor)]
                probe.inputs = [a.detach() for a in inputs]
                if inputs and inputs[0].requires_grad:
                    inputs[0].register_hook(self._grad_setter(probe, "grad_in"))

        return hook

    def _post_hook(self, name: str):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if not self._active(module) or not isinstance(output, torch.Tensor):
                return
            probe = self.probes.setdefault(name, _Probe())
            probe.finite = checksum(output)
            if self.detail:
                probe.output = output.detach()
            if probe.act_module is None and self.detail and output.requires_grad:
                # no nonlinearity inside: until one runs, the output is the activation
                output.register_hook(self._grad_setter(probe, "grad_out", only_if_no_act=True))

        return hook

    def _activation_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self._active(module) or self._current is None or not isinstance(output, torch.Tensor):
            return
        probe = self.probes.setdefault(self._current, _Probe())
        self._current = None  # one nonlinearity per layer
        probe.act_module = module
        if self.detail:
            probe.act = output.detach()
        probe.finite = checksum(output) + (probe.finite if probe.finite is not None else 0.0)
        if self.detail and output.requires_grad:
            output.register_hook(self._grad_setter(probe, "grad_out"))

    @staticmethod
    def _grad_setter(probe: _Probe, attr: str, only_if_no_act: bool = False):  # noqa: ANN205
        def hook(grad: torch.Tensor) -> None:
            if only_if_no_act and probe.act_module is not None:
                return
            setattr(probe, attr, grad.detach())

        return hook

    def forward_order(self) -> list[str]:
        """Weight layers in the order the last forward ran them (registration order before any)."""
        return list(self.order) + [n for n in self.layers if n not in self.order]


def locate_nonfinite(model: nn.Module, hooks: LayerHooks | None = None) -> tuple[str | None, str]:
    """The first layer in forward order whose weights or last activations are non-finite, then
    (backward order, where backpropagation produced it first) the layer with a non-finite
    weight gradient; ``(None, 'loss')`` when every layer is finite."""
    layers = weight_layers(model)
    order = hooks.forward_order() if hooks is not None else list(layers)
    for name in order:
        if not all(bool(torch.isfinite(p).all()) for p in weight_params(layers[name])):
            return name, "weights"
        probe = hooks.probes.get(name) if hooks is not None else None
        if probe is not None and probe.finite is not None and not bool(torch.isfinite(probe.finite)):
            return name, "activations"
    for name in reversed(order):
        grads = [p.grad for p in layers[name].parameters(recurse=False) if p.grad is not None]
        if not all(bool(torch.isfinite(g).all()) for g in grads):
            return name, "gradients"
    return None, "loss"
