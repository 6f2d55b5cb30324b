"""The TensorFlow CIFAR-10 tutorial network and its two exercise variants (REFERENCE §1).

``tf-tutorial``        conv-pool-norm-conv-norm-pool, then fully connected local3/local4 (1,068,298 params)
``tf-tutorial-conv``   the top as shared-weight 3x3 convolutions (174,250 params; *not* the exercise's answer)
``tf-tutorial-local``  exercise 2 done literally: local3/local4 become cuda-convnet's locally connected
                       layers of the 11% network (2,112,970 params)
``tf-tutorial-2016``   the blog's failing network, a deliberate bug kept for diagnosis: the tutorial's code
                       of 2016 (conv1 and conv2 at std 1e-4) with the tempting wrong exercise answers
                       (the shared-conv top of ``tf-tutorial-conv``, and a softmax inside the model under
                       the softmax cross-entropy: the double softmax of exercise 1)

``softmax_output=True`` (any of them; the default of ``tf-tutorial-2016`` only) makes ``forward`` return
probabilities instead of logits. That is the bug, kept on purpose: training's cross-entropy takes the output
as logits and applies a second softmax. ``outputs_probabilities`` says so, and ``predict_proba`` (eval,
predict) takes ``log`` of the output as its logits, so probabilities are not softmaxed twice there.
"""
from __future__ import annotations

import torch
from torch import nn

from ..nn import LocallyConnected2d
from ..nn.lrn import CrossMapLRN
from .base import Classifier, GroupSpec, InputSpec, ModelValueError, check_num_classes, check_positive
from .registry import register_model


def trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    """TF's ``truncated_normal_initializer``: N(0, std) re-drawn beyond two standard deviations."""
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2 * std, b=2 * std)


def tf_lrn() -> CrossMapLRN:
    """``tf.nn.lrn(depth_radius=4, bias=1, alpha=0.001/9, beta=0.75)`` in PyTorch's convention."""
    return CrossMapLRN(9, alpha=1e-3, beta=0.75, k=1.0)


def tf_same_maxpool() -> nn.MaxPool2d:
    """TF 'SAME' 3x3/2 max pooling: the extra padding goes bottom/right only = ceil_mode (24->12->6)."""
    return nn.MaxPool2d(3, stride=2, ceil_mode=True)


class TFTutorialNet(Classifier):
    """TensorFlow CIFAR-10 tutorial model; ``top`` picks the fc / conv / local top.

    Weight decay is a loss term (``wd * sum(w^2)/2``) as in the tutorial, not an optimizer option.
    """

    input_spec = InputSpec(crop=24, normalize="standardize", photometric=True)

    def __init__(self, top: str = "fc", conv1_std: float = 5e-2, conv2_std: float = 5e-2,
                 num_classes: int = 10, in_chans: int = 3, softmax_output: bool = False) -> None:
        super().__init__()
        check_positive(conv1_std, "conv1_std")
        check_positive(conv2_std, "conv2_std")
        if not isinstance(softmax_output, bool):
            raise ModelValueError(f"softmax_output must be True or False, got {softmax_output!r}")
        # The deliberate exercise-1 bug: forward returns softmax probabilities (see the module docstring).
        self.outputs_probabilities = softmax_output
        self.num_classes = check_num_classes(num_classes)
        if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
            raise ModelValueError(f"in_chans must be a whole number >= 1, got {in_chans!r}")
        self.in_chans = in_chans
        self.conv1 = nn.Conv2d(in_chans, 64, 5, padding=2)
        self.pool1 = tf_same_maxpool()
        self.norm1 = tf_lrn()
        self.conv2 = nn.Conv2d(64, 64, 5, padding=2)
        self.norm2 = tf_lrn()
        self.pool2 = tf_same_maxpool()
        trunc_normal_(self.conv1.weight, conv1_std)
        nn.init.zeros_(self.conv1.bias)
        trunc_normal_(self.conv2.weight, conv2_std)
        nn.init.constant_(self.conv2.bias, 0.1)
        # (module, weight-decay) pairs for the loss term
        self._decay: list[tuple[str, float]] = []
        self.top = top
        if top == "fc":
            self.local3 = nn.Linear(6 * 6 * 64, 384)
            self.local4 = nn.Linear(384, 192)
            self.softmax_linear = self._new_head(num_classes)
            for layer, std, bias in ((self.local3, 0.04, 0.1), (self.local4, 0.04, 0.1)):
                trunc_normal_(layer.weight, std)
                nn.init.constant_(layer.bias, bias)
            self._init_head(self.softmax_linear)
            self._decay = [("local3", 0.004), ("local4", 0.004)]
        elif top == "conv":
            self.local3 = nn.Conv2d(64, 64, 3, padding=1)
            self.local4 = nn.Conv2d(64, 32, 3, padding=1)
            self.softmax_linear = self._new_head(num_classes)
            for layer, std, bias in ((self.local3, 0.04, 0.1), (self.local4, 0.04, 0.1)):
                trunc_normal_(layer.weight, std)
                nn.init.constant_(layer.bias, bias)
            self._init_head(self.softmax_linear)
            self._decay = [("local3", 0.004), ("local4", 0.004)]
        elif top == "local":
            # cuda-convnet cc-11pct top: local3/local4 3x3 pad 1 unshared, fc10; its initW and wc.
            self.local3 = LocallyConnected2d(64, 64, 6, 3, padding=1, init_std=0.04)
            self.local4 = LocallyConnected2d(64, 32, 6, 3, padding=1, init_std=0.04)
            self.softmax_linear = self._new_head(num_classes)
            for layer in (self.local3, self.local4):
                nn.init.constant_(layer.bias, 0.1)
            self._init_head(self.softmax_linear)
            self._decay = [("local3", 0.004), ("local4", 0.004), ("softmax_linear", 0.01)]
        else:
            raise ValueError(f"unknown top {top!r} (fc, conv, local)")
        self.relu = nn.ReLU()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu(self.conv1(x))))
        return self.pool2(self.norm2(self.relu(self.conv2(x))))

    # The head is created and initialised in two calls, at the places the random draws always
    # had: the same seed gives the same initial weights as before the head became resettable.
    def _new_head(self, num_classes: int) -> nn.Linear:
        return nn.Linear(192 if self.top == "fc" else 6 * 6 * 32, num_classes)

    def _init_head(self, head: nn.Linear) -> None:
        """The tutorial's init (fc and conv tops) or cuda-convnet's fc10 init (local top)."""
        if self.top == "local":
            nn.init.normal_(head.weight, std=0.01)
        else:
            trunc_normal_(head.weight, 1 / 192.0 if self.top == "fc" else 0.01)
        nn.init.zeros_(head.bias)

    def get_classifier(self) -> nn.Module:
        return self.softmax_linear

    def reset_classifier(self, num_classes: int) -> None:
        num_classes = check_num_classes(num_classes)
        old = self.softmax_linear
        head = self._new_head(num_classes)
        self._init_head(head)
        self.softmax_linear = head.to(device=old.weight.device, dtype=old.weight.dtype)
        self.num_classes = num_classes
        if hasattr(self, "model_kwargs"):  # what a run folder stores to rebuild the model
            self.model_kwargs = {k: v for k, v in self.model_kwargs.items() if k != "num_classes"}
            if num_classes != 10:
                self.model_kwargs["num_classes"] = num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        x = self.features(x)
        if self.top == "fc":
            x = x.flatten(1)
        x = self.relu(self.local3(x))
        x = self.relu(self.local4(x))
        logits = self.softmax_linear(x.flatten(1))
        return torch.softmax(logits, dim=-1) if self.outputs_probabilities else logits

    def regularization_loss(self) -> torch.Tensor:
        return sum(wd * 0.5 * getattr(self, name).weight.float().pow(2).sum() for name, wd in self._decay)

    def param_groups(self) -> list[GroupSpec]:
        # The tutorial: plain SGD (no momentum), lr 0.1 for every variable; decay is in the loss.
        return [GroupSpec(params=list(self.parameters()), lr=0.1, momentum=0.0, wc=0.0, name="all")]


@register_model("tf-tutorial")
def tf_tutorial(conv1_std: float = 5e-2, conv2_std: float = 5e-2, num_classes: int = 10,
                in_chans: int = 3, softmax_output: bool = False) -> Classifier:
    """TF CIFAR-10 tutorial network, fully connected top (1,068,298 params)."""
    return TFTutorialNet("fc", conv1_std, conv2_std, num_classes, in_chans, softmax_output)


@register_model("tf-tutorial-conv")
def tf_tutorial_conv(conv1_std: float = 5e-2, conv2_std: float = 5e-2, num_classes: int = 10,
                     in_chans: int = 3, softmax_output: bool = False) -> Classifier:
    """TF tutorial with a shared-weight 3x3 conv top (174,250 params)."""
    return TFTutorialNet("conv", conv1_std, conv2_std, num_classes, in_chans, softmax_output)


@register_model("tf-tutorial-local")
def tf_tutorial_local(conv1_std: float = 5e-2, conv2_std: float = 5e-2, num_classes: int = 10,
                      in_chans: int = 3, softmax_output: bool = False) -> Classifier:
    """TF tutorial with cc-11pct's locally connected top, exercise 2 (2,112,970 params)."""
    return TFTutorialNet("local", conv1_std, conv2_std, num_classes, in_chans, softmax_output)


# The tutorial's init of 2016 (REFERENCE §1: conv1 and conv2 at 1e-4).
TF2016_CONV_STD = 1e-4


@register_model("tf-tutorial-2016")
def tf_tutorial_2016(conv1_std: float = TF2016_CONV_STD, conv2_std: float = TF2016_CONV_STD, num_classes: int = 10,
                     in_chans: int = 3, softmax_output: bool = True) -> Classifier:
    """DELIBERATE BUG: the blog's 2016 network (conv1/conv2 std 1e-4, conv top, softmax in the model), stuck."""
    return TFTutorialNet("conv", conv1_std, conv2_std, num_classes, in_chans, softmax_output)
