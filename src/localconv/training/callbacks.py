"""Hooks into the training loop, in a module of their own.

The engine calls them; diagnostics (the layer monitor, ``--watch``) and reports (TensorBoard) implement
them. Keeping the base class here, apart from the engine, gives the imports one direction:
``reports`` imports ``training``, and ``training`` never imports ``reports`` or ``diagnostics`` (the CLI wires
monitors into a run as callbacks). ``diagnostics`` stands on torch alone (the doctor works on any model): its
monitor and ``--watch`` callback have these methods without subclassing :class:`Callback`. ``trainer`` is the :class:`~localconv.training.engine.Trainer`
running the loop; it is typed ``Any`` here because importing the engine would close the circle.
"""
from __future__ import annotations

from typing import Any


class Callback:
    """Hooks into the loop; every method is optional."""

    def on_train_start(self, trainer: Any) -> None: ...
    def after_backward(self, trainer: Any, loss: Any) -> None: ...  # eager step only; loss: torch.Tensor
    def after_step(self, trainer: Any, loss: Any) -> None: ...
    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None: ...
    def on_train_end(self, trainer: Any) -> None: ...
