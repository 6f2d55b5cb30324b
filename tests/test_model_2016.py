"""tf-tutorial-2016: the blog's failing network as a named, deliberately broken variant (issue 22, item 8)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import localconv
from localconv.cli.common import model_from_args
from localconv.cli.main import build_parser
from localconv.data.augment import eval_batch
from localconv.errors import LocalconvError
from localconv.models.base import InputSpec
from localconv.models.registry import model_description, model_spec
from localconv.reports.calibration import centre_view_logits


def _balanced_batch(fake_cifar, per_class=3):
    """``per_class`` images of each class: on a batch with a class prior, even a stuck network lowers its
    loss a little by learning that prior in the head's biases."""
    tx, ty, _, _ = fake_cifar
    idx = torch.cat([torch.nonzero(torch.from_numpy(ty) == c)[:per_class, 0] for c in range(10)])
    return eval_batch(torch.from_numpy(tx[idx.numpy()]), InputSpec()), torch.from_numpy(ty[idx.numpy()])


def test_2016_variant_is_the_2016_init_the_conv_top_and_a_softmax_output():
    torch.manual_seed(0)
    bug = localconv.create_model("tf-tutorial-2016")
    for conv in (bug.conv1, bug.conv2):  # both at the tutorial's std of 2016, truncated at 2 std
        assert conv.weight.abs().max() <= 2e-4 + 1e-9
        assert 0.8 * 0.88e-4 < conv.weight.std() < 1.2e-4
    assert isinstance(bug.local3, nn.Conv2d) and isinstance(bug.local4, nn.Conv2d)  # the shared-conv top
    assert sum(p.numel() for p in bug.parameters()) == 174_250
    assert bug.outputs_probabilities is True
    assert "DELIBERATE BUG" in model_description("tf-tutorial-2016")
    # the same draws as tf-tutorial-conv at 1e-4; the output is that network's softmax
    torch.manual_seed(0)
    conv = localconv.create_model("tf-tutorial-conv", conv1_std=1e-4, conv2_std=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(bug.state_dict().values(), conv.state_dict().values()))
    x = torch.randn(4, 3, 24, 24)
    assert torch.allclose(bug(x), torch.softmax(conv(x), dim=-1), atol=1e-7)
    assert torch.allclose(bug(x).sum(1), torch.ones(4), atol=1e-6)
    # options: the blog's fix and the logits version rebuild from their run spec
    fixed = localconv.create_model("tf-tutorial-2016", conv2_std=1e-2, softmax_output=False)
    assert fixed.outputs_probabilities is False and fixed.conv2.weight.abs().max() > 2e-4
    assert model_spec(fixed) == {"name": "tf-tutorial-2016",
                                 "kwargs": {"conv2_std": 1e-2, "softmax_output": False}}
    with pytest.raises(ValueError, match="softmax_output"):
        localconv.create_model("tf-tutorial-2016", softmax_output="yes")


def test_predict_proba_does_not_softmax_a_softmax_output_twice():
    torch.manual_seed(0)
    bug = localconv.create_model("tf-tutorial-2016", conv1_std=5e-2, conv2_std=5e-2).eval()
    x = torch.randn(5, 3, 24, 24)
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True, unbiased=False)
    with torch.no_grad():
        out = bug(x)
    probs = bug.predict_proba(x)
    assert torch.allclose(probs, out, atol=1e-6)
    # a second softmax would flatten the probabilities towards 1/10 and differ
    assert not torch.allclose(torch.softmax(out, -1), out, atol=1e-3)
    # eval --calibrate fits its temperature on these logits: their softmax is the model's own output
    images = torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    with torch.no_grad():
        own = bug(bug.preprocess(images))
    assert torch.allclose(torch.softmax(centre_view_logits(bug, images), -1), own, atol=1e-6)


@pytest.mark.parametrize("name", ["tf-tutorial", "tf-tutorial-conv", "tf-tutorial-local"])
def test_the_other_models_still_return_logits(name):
    model = localconv.create_model(name)
    assert model.outputs_probabilities is False and "softmax_output" not in model_spec(model)["kwargs"]
    x = torch.randn(3, 3, 24, 24)
    x = (x - x.mean((1, 2, 3), keepdim=True)) / x.std((1, 2, 3), keepdim=True, unbiased=False)
    model.eval()
    with torch.no_grad():
        logits = model(x)
        head_input = model.relu(model.local4(model.relu(model.local3(
            model.features(x).flatten(1) if name == "tf-tutorial" else model.features(x))))).flatten(1)
        assert torch.equal(logits, model.softmax_linear(head_input))  # the head's output, nothing after it
    assert torch.allclose(model.predict_proba(x), torch.softmax(logits, -1))
    assert localconv.create_model(name, softmax_output=True).outputs_probabilities is True


def _plain_loop(model, x, y, steps=15, lr=0.1):
    """The tutorial's loop: SGD, softmax cross-entropy on the model's output; the cross-entropy per step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.slow  # 30 training steps of a 174k-parameter network: a few seconds
def test_a_few_steps_leave_the_2016_network_stuck_at_ln10(fake_cifar):
    x, y = _balanced_batch(fake_cifar)
    torch.manual_seed(0)
    stuck = _plain_loop(localconv.create_model("tf-tutorial-2016"), x, y)
    assert max(abs(v - math.log(10)) for v in stuck) < 1e-3, stuck
    # the same loop, data and seed on today's init with logits does learn: the test can tell the two apart
    torch.manual_seed(0)
    learns = _plain_loop(localconv.create_model("tf-tutorial-2016", conv1_std=5e-2, conv2_std=5e-2,
                                                softmax_output=False), x, y)
    assert min(learns) < math.log(10) - 0.3, learns


def test_softmax_output_cli_option():
    def build(*argv):
        return model_from_args(build_parser().parse_args(["summary", *argv]))

    assert build("--model", "tf-tutorial-2016").outputs_probabilities is True
    assert build("--model", "tf-tutorial-2016", "--no-softmax-output").outputs_probabilities is False
    assert build("--model", "tf-tutorial", "--softmax-output").outputs_probabilities is True
    assert build("--model", "tf-tutorial").outputs_probabilities is False
    with pytest.raises(LocalconvError, match="--softmax-output applies to the tf-tutorial family, not to .*cc-11pct"):
        build("--model", "cc-11pct", "--softmax-output")


def test_the_doctors_fixes_name_the_flags_that_apply_them() -> None:
    """Issue 22 item 7: on the tf-tutorial family the softmax finding's fix is --no-softmax-output and an init
    finding's is --convN-std; on a foreign model neither flag is offered."""
    import argparse

    from localconv.cli.doctor_cmd import add_flag_fixes
    from localconv.diagnostics.checks import Finding

    def fixes(model: str | None) -> list[str]:
        found = [Finding("softmax_before_loss", "softmax_linear", "error", "m", "return the logits."),
                 Finding("init_too_small", "conv2", "warning", "m", "raise its init.", std=0.028)]
        add_flag_fixes(found, argparse.Namespace(model=model, cfg=None))
        return [f.fix for f in found]

    assert fixes("tf-tutorial-2016") == ["return the logits. With localconv: --no-softmax-output.",
                                         "raise its init. With localconv: --conv2-std 0.028."]
    assert fixes(None) == ["return the logits.", "raise its init."]
