import math

import pytest
import torch
import torch.nn.functional as F

import localconv
from localconv.errors import ModelError
from localconv.models.tf_tutorial import tf_lrn, tf_same_maxpool


def n_params(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,count", [("tf-tutorial", 1_068_298), ("tf-tutorial-conv", 174_250),
                                        ("tf-tutorial-local", 2_112_970)])
def test_parameter_counts_and_shapes(name, count):
    model = localconv.create_model(name)
    assert n_params(model) == count
    x = torch.randn(3, 3, 24, 24)
    assert model(x).shape == (3, 10)
    p = model.predict_proba(x)
    assert torch.allclose(p.sum(1), torch.ones(3), atol=1e-6) and (p >= 0).all()


def test_unknown_model_is_a_user_error():
    with pytest.raises(ModelError, match="unknown model 'nope'"):
        localconv.create_model("nope")
    with pytest.raises(ModelError):
        localconv.create_model("tf-tutorial", bogus=1)


def test_tf_same_pooling_pads_bottom_right_only():
    x = torch.randn(2, 4, 24, 24)
    ref = F.max_pool2d(F.pad(x, (0, 1, 0, 1), value=float("-inf")), 3, 2)
    assert torch.equal(tf_same_maxpool()(x), ref)
    assert tf_same_maxpool()(torch.randn(1, 1, 12, 12)).shape[-1] == 6


def test_lrn_is_tf_formula():
    x = torch.rand(2, 64, 5, 5)
    y = tf_lrn()(x)
    sq = F.pad(x.pow(2), (0, 0, 0, 0, 4, 4))
    window = torch.stack([sq[:, c:c + 9].sum(1) for c in range(64)], 1)
    ref = x / (1.0 + (0.001 / 9.0) * window) ** 0.75
    assert torch.allclose(y, ref, atol=1e-6)


def test_init_follows_the_tutorial_and_conv2_std_option():
    torch.manual_seed(0)
    m = localconv.create_model("tf-tutorial")
    w = m.conv2.weight
    assert w.abs().max() <= 2 * 5e-2 + 1e-7  # truncated normal
    assert 0.8 * 5e-2 * 0.88 < w.std() < 1.2 * 5e-2  # truncation at 2 std shrinks std by ~12%
    assert torch.all(m.conv2.bias == 0.1) and torch.all(m.conv1.bias == 0)
    assert torch.all(m.local3.bias == 0.1) and torch.all(m.softmax_linear.bias == 0)
    bug = localconv.create_model("tf-tutorial", conv2_std=1e-4)
    assert bug.conv2.weight.abs().max() <= 2e-4 + 1e-9


def test_weight_decay_is_a_loss_term():
    m = localconv.create_model("tf-tutorial")
    ref = 0.004 * 0.5 * (m.local3.weight.pow(2).sum() + m.local4.weight.pow(2).sum())
    assert torch.allclose(m.regularization_loss(), ref)


def _train_steps(model, x, y, double_softmax, steps=60, lr=0.1):
    """Train on a fixed batch; returns (accuracy, cross-entropy of the logits, the objective it minimized)."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(steps):
        out = model(x)
        if double_softmax:  # the exercise-1 trap: normalized outputs fed to a softmax cross-entropy loss
            out = torch.softmax(out, 1)
        loss = F.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = model(x)
        objective = F.cross_entropy(torch.softmax(logits, 1) if double_softmax else logits, y).item()
        return (logits.argmax(1) == y).float().mean().item(), F.cross_entropy(logits, y).item(), objective


def test_exercise1_double_softmax_learns_worse_than_logits(fake_cifar):
    from localconv.data.augment import eval_batch
    from localconv.models.base import InputSpec

    tx, ty, _, _ = fake_cifar
    x = eval_batch(torch.from_numpy(tx[:64]), InputSpec())
    y = torch.from_numpy(ty[:64])
    torch.manual_seed(0)
    right = localconv.create_model("tf-tutorial")
    torch.manual_seed(0)
    trap = localconv.create_model("tf-tutorial")
    acc_right, loss_right, _ = _train_steps(right, x, y, False)
    acc_trap, loss_trap, objective_trap = _train_steps(trap, x, y, True)
    # Same init, same data, same steps: only where the softmax goes differs.
    # A softmax over probabilities in [0, 1] can never be confident: its cross-entropy is at least
    # log(1 + 9/e) = 1.46 for 10 classes, so the trap's gradients fade long before it fits the data.
    assert objective_trap >= math.log(1 + 9 / math.e) - 1e-6
    assert loss_right < math.log(1 + 9 / math.e) < loss_trap, (loss_right, loss_trap)
    assert acc_right > acc_trap, (acc_right, acc_trap)
