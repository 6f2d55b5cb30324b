"""A zoo of small models for the doctor (issue 22): one planted bug per class it must name, and healthy
models of the kinds people use, which it must not call broken.

Each case builds ``(model, data, diagnose keyword arguments)`` from a seed; ``expected`` is the
``(kind, layer)`` the doctor must report as a problem (None for healthy models). Layer names are those of
``model.named_modules()``: in an ``nn.Sequential`` the index. Used by tests/test_doctor_zoo.py and by
benchmarks/doctor_time.py (detection and false-alarm counts).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

SIDE = 8          # 3x8x8 images: enough structure for a small CNN, fast on a CPU
N_IMAGES = 640    # the doctor holds out a fifth (128) and trains on 512
STEPS = 150


def zoo_data(seed: int = 0, n: int = N_IMAGES, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Learnable images, standardized: a class prototype plus noise as large as it."""
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(classes, 3, SIDE, SIDE, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    images = prototypes[labels] * 0.7 + torch.randn(n, 3, SIDE, SIDE, generator=g)
    return (images - images.mean()) / images.std(), labels


def cnn() -> nn.Sequential:
    """conv 0, conv 3, fc 7, classifier 9 (ReLUs in between)."""
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(32 * (SIDE // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10))


def mlp(activation: type[nn.Module] = nn.ReLU, depth: int = 2, width: int = 64) -> nn.Sequential:
    """Linear layers 1, 3, 5... with ``activation`` after each hidden one."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = 3 * SIDE * SIDE
    for _ in range(depth):
        layers += [nn.Linear(features, width), activation()]
        features = width
    return nn.Sequential(*layers, nn.Linear(features, 10))


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(x + self.bn2(self.conv2(out)))


class ResNet(nn.Module):
    """A small BatchNorm residual net."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block1 = ResidualBlock(8)
        self.block2 = ResidualBlock(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def local_net() -> nn.Sequential:
    """conv, then localconv's locally connected layer (unshared weights), then the classifier."""
    from localconv import LocallyConnected2d

    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         LocallyConnected2d(16, 16, input_size=SIDE // 2, kernel_size=3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16 * (SIDE // 2) ** 2, 10))


@dataclass
class Case:
    name: str
    build: Callable[[], tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]]
    expected: tuple[str, str | None] | None = None    # (kind, layer) to be named; None: healthy
    steps: int = STEPS                                # memorizing shuffled labels takes longer


def _plain(model: nn.Module, **kw: Any) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    return model, zoo_data(), kw


def _init(model: nn.Sequential, index: int, std: float | None = None, bias: float | None = None) -> nn.Sequential:
    layer = model[index]
    with torch.no_grad():
        if std is not None:
            layer.weight.normal_(0.0, std) if std else layer.weight.zero_()
        if bias is not None:
            layer.bias.fill_(bias)
    return model


def _without(model: nn.Module, prefix: str) -> torch.optim.Optimizer:
    params = [p for name, p in model.named_parameters() if not name.startswith(prefix)]
    return torch.optim.SGD(params, lr=0.01, momentum=0.9)


def _softmax_cnn() -> nn.Sequential:
    return nn.Sequential(*cnn(), nn.Softmax(dim=1))


def _raw_pixels() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    x, y = zoo_data()
    return cnn(), ((x * 60 + 128).clamp(0, 255), y), {}


def _shuffled_labels() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    x, y = zoo_data()
    return cnn(), (x, y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]), {}


def _adam(model: nn.Module) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    return _plain(model, optimizer=torch.optim.Adam(model.parameters(), lr=1e-3))


def _zero_classifier() -> nn.Sequential:
    model = cnn()
    nn.init.zeros_(model[9].weight)
    nn.init.zeros_(model[9].bias)
    return model


def _sgd(model: nn.Module, lr: float) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    return _plain(model, optimizer=torch.optim.SGD(model.parameters(), lr=lr))


def _left_out() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], dict[str, Any]]:
    model = cnn()
    return _plain(model, optimizer=_without(model, "3."))


BUGS = [
    Case("init far too small (conv 3, std 1e-4)", lambda: _plain(_init(cnn(), 3, std=1e-4)), ("init_too_small", "3")),
    Case("init far too large (fc 7, std 10)", lambda: _plain(_init(cnn(), 7, std=10.0)), ("init_too_large", "7")),
    Case("hidden layer initialized to zero (conv 3)", lambda: _plain(_init(cnn(), 3, std=0.0)), ("zero_init", "3")),
    Case("ReLUs that never fire (fc 7, bias -10)", lambda: _plain(_init(cnn(), 7, bias=-10.0)), ("dead_layer", "7")),
    Case("learning rate so high it diverges (SGD 50)", lambda: _sgd(cnn(), 50.0), ("update_too_large", None)),
    Case("learning rate so low nothing moves (SGD 1e-8)", lambda: _sgd(cnn(), 1e-8), ("learning_rate_too_low", None)),
    Case("layer left out of the optimizer (conv 3)", _left_out, ("not_in_optimizer", "3")),
    Case("softmax before cross-entropy (module 10)", lambda: _plain(_softmax_cnn()), ("softmax_before_loss", "10")),
    Case("unnormalized 0..255 inputs", _raw_pixels, ("unnormalized_inputs", "0")),
    Case("labels shuffled apart from their images", _shuffled_labels, ("labels_mismatch", None), steps=250),
    Case("vanishing gradients across 8 sigmoid layers", lambda: _plain(mlp(nn.Sigmoid, depth=8)),
         ("vanishing_gradients", "1")),
]

HEALTHY = [
    Case("CNN, default init, SGD", lambda: _plain(cnn())),
    Case("CNN, default init, Adam", lambda: _adam(cnn())),
    Case("MLP, default init, SGD", lambda: _plain(mlp())),
    Case("tanh MLP, 3 hidden layers", lambda: _plain(mlp(nn.Tanh, depth=3))),
    Case("BatchNorm residual net, SGD", lambda: _plain(ResNet())),
    Case("BatchNorm residual net, Adam", lambda: _adam(ResNet())),
    Case("zero-initialized classifier", lambda: _plain(_zero_classifier())),
    Case("localconv locally connected layer", lambda: _plain(local_net())),
]


def run_case(case: Case, seed: int = 0, steps: int | None = None) -> Any:
    """The doctor's report on one case (the model built after ``torch.manual_seed(seed)``)."""
    import localconv

    torch.manual_seed(seed)
    model, data, kw = case.build()
    return localconv.diagnose(model, data, steps=steps or case.steps, seed=seed, **kw)


def detected(case: Case, report: Any) -> bool:
    """The planted bug is named as a problem at its layer."""
    return case.expected in {(f.kind, f.layer) for f in report.problems}
