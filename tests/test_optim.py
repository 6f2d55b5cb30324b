"""ConvNetSGD: cuda-convnet's update rule, checked against numbers worked out by hand."""
from __future__ import annotations

import io

import pytest
import torch

from localconv.models.base import GroupSpec
from localconv.training.optim import ConvNetSGD

GRADS = [0.5, -0.25, 1.0]


def _run(opt: ConvNetSGD, params: list[torch.nn.Parameter], grads: list[float]) -> list[list[float]]:
    history = []
    for g in grads:
        for p in params:
            p.grad = torch.full_like(p, g)
        opt.step()
        history.append([p.item() for p in params])
    return history


def test_three_steps_by_hand() -> None:
    w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    b = torch.nn.Parameter(torch.tensor(0.0, dtype=torch.float64))
    opt = ConvNetSGD([{"params": [w], "lr": 0.1, "momentum": 0.9, "wc": 0.01},
                      {"params": [b], "lr": 0.2, "momentum": 0.5, "wc": 0.0}])
    history = _run(opt, [w, b], GRADS)
    # weight: inc = 0.9*inc - 0.01*0.1*W - 0.1*g
    #   step 1: inc = 0 - 0.001*1.0 - 0.05                        = -0.051        W = 0.949
    #   step 2: inc = -0.0459 - 0.000949 + 0.025                   = -0.021849     W = 0.927151
    #   step 3: inc = -0.0196641 - 0.000927151 - 0.1               = -0.120591251  W = 0.806559749
    # bias (no decay): inc = 0.5*inc - 0.2*g
    #   step 1: -0.1 (b = -0.1); step 2: -0.05 + 0.05 = 0 (b = -0.1); step 3: -0.2 (b = -0.3)
    expected = [[0.949, -0.1], [0.927151, -0.1], [0.806559749, -0.3]]
    for got, want in zip(history, expected):
        assert got == pytest.approx(want, abs=1e-12)
    assert opt.state[w]["momentum_buffer"].item() == pytest.approx(-0.120591251, abs=1e-12)


def test_lr_change_scales_only_new_terms() -> None:
    # A schedule phase multiplies lr by 0.1 before step 3; the stored inc keeps the old lr in it.
    w = torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))
    opt = ConvNetSGD([{"params": [w], "lr": 0.1, "momentum": 0.9, "wc": 0.01}])
    _run(opt, [w], GRADS[:2])  # W = 0.927151, inc = -0.021849 (as above)
    opt.param_groups[0]["lr"] = 0.01
    _run(opt, [w], GRADS[2:])
    # inc = 0.9*(-0.021849) - 0.01*0.01*0.927151 - 0.01*1.0 = -0.0196641 - 0.0000927151 - 0.01
    assert w.item() == pytest.approx(0.927151 - 0.0297568151, abs=1e-12)


def test_plain_sgd_equals_torch_sgd() -> None:
    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(5, 3))
    b = torch.nn.Parameter(a.detach().clone())
    ours, ref = ConvNetSGD([a], lr=0.1), torch.optim.SGD([b], lr=0.1)
    for _ in range(3):
        g = torch.randn(5, 3)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        ref.step()
    torch.testing.assert_close(a, b)


def test_nesterov_equals_torch_sgd_nesterov_with_decay() -> None:
    # at a constant rate, inc = -lr * buf of torch's SGD: W += m * inc - lr * (g + wc * W) is torch's
    # W -= lr * (g' + m * buf) with g' = g + wc * W
    torch.manual_seed(0)
    start = torch.randn(5, 3, dtype=torch.float64)
    a, b, c = (torch.nn.Parameter(start.clone()) for _ in range(3))
    ours = ConvNetSGD([{"params": [a], "lr": 0.05, "momentum": 0.9, "wc": 5e-4, "nesterov": True}])
    ref = torch.optim.SGD([b], lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    heavy_ball = ConvNetSGD([{"params": [c], "lr": 0.05, "momentum": 0.9, "wc": 5e-4}])
    for _ in range(4):
        g = torch.randn(5, 3, dtype=torch.float64)
        a.grad, b.grad, c.grad = g.clone(), g.clone(), g.clone()
        for opt in (ours, ref, heavy_ball):
            opt.step()
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert (a - c).abs().max() > 1e-3  # the option changes the step


def test_state_dict_round_trip_continues_identically() -> None:
    torch.manual_seed(0)
    grads = [torch.randn(4) for _ in range(4)]
    p1 = torch.nn.Parameter(torch.randn(4))
    p2 = torch.nn.Parameter(p1.detach().clone())
    opt1 = ConvNetSGD([{"params": [p1], "lr": 0.05, "momentum": 0.9, "wc": 0.004, "name": "w"}])
    for g in grads[:2]:
        p1.grad = g.clone()
        opt1.step()
    buffer = io.BytesIO()  # as a checkpoint does: saved to bytes, loaded with weights_only=True
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    with torch.no_grad():
        p2.copy_(p1)
    opt2 = ConvNetSGD([{"params": [p2], "lr": 0.05, "momentum": 0.9, "wc": 0.004, "name": "w"}])
    opt2.load_state_dict(saved)
    for g in grads[2:]:
        p1.grad, p2.grad = g.clone(), g.clone()
        opt1.step()
        opt2.step()
    torch.testing.assert_close(p1, p2)
    assert opt2.param_groups[0]["name"] == "w"


def test_accepts_groupspecs_and_skips_params_without_grad() -> None:
    w = torch.nn.Parameter(torch.ones(2))
    frozen = torch.nn.Parameter(torch.ones(2))
    opt = ConvNetSGD([GroupSpec([w], lr=0.5, momentum=0.0, wc=0.0, name="w"),
                      GroupSpec([frozen], lr=0.5, name="frozen")])
    w.grad = torch.ones(2)
    opt.step()
    assert torch.equal(w.detach(), torch.full((2,), 0.5)) and torch.equal(frozen.detach(), torch.ones(2))
    assert [g["name"] for g in opt.param_groups] == ["w", "frozen"]


@pytest.mark.parametrize("bad", [{"lr": -0.1}, {"momentum": float("nan")}, {"wc": -1.0}])
def test_rejects_invalid_hyperparameters(bad: dict) -> None:
    group = {"params": [torch.nn.Parameter(torch.ones(1))], "lr": 0.1, "momentum": 0.0, "wc": 0.0, **bad}
    with pytest.raises(ValueError):
        ConvNetSGD([group])
