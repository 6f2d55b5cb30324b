"""A training step that never waits for the host, optionally captured as one CUDA graph.

:class:`FusedStep` does what :meth:`Trainer.train_step` does -- crop/flip/normalize a batch, forward,
loss, backward, cuda-convnet's update, the weight average -- but reads every per-step quantity from
device tensors: the epoch's plan sits in static buffers, the batch position and the global step are
device counters, the learning-rate multipliers are a table computed once from the run's schedule,
and the update is a handful of multi-tensor (``torch._foreach_*``) ops per parameter group. No step
needs a value back from the device, so the host can queue steps ahead of the GPU; and because the
step reads nothing from Python, on CUDA it can be captured once (``torch.cuda.CUDAGraph``) and
replayed, one launch in place of the few hundred kernels of an eager step.

What the eager step has and this one gives up (the Trainer picks eager when a run needs them):
stopping *before* a non-finite update (here the loss is checked every ``poll_every`` steps and the run
stops naming the first bad step), ``--skip-nonfinite``, ``after_backward`` callbacks, DDP.
"""
from __future__ import annotations

from typing import Any

import torch

from ..data.augment import EpochPlan, train_batch
from ..errors import LocalconvError

STEP_MODES = ("auto", "eager", "fused", "graph")
WARMUP_STEPS = 3  # eager steps on a side stream before capture (cuDNN autotuning, Triton compilation)


class FusedStep:
    """The device-side step of one :class:`Trainer` (see the module docstring)."""

    def __init__(self, trainer: Any, capture: bool) -> None:  # the Trainer (not imported: it imports this module)
        if capture and trainer.device.type != "cuda":
            raise ValueError("CUDA graph capture needs a CUDA device")
        self.trainer, self.capture = trainer, capture
        device, n = trainer.device, trainer.splits.train_images.shape[0]
        self.batch = trainer.local_batch
        self.images, self.labels = trainer.splits.train_images, trainer.splits.train_labels
        self.spec = trainer.train_spec
        self.plan = EpochPlan(torch.zeros(n, dtype=torch.long, device=device),
                              torch.zeros(n, 2, dtype=torch.long, device=device),
                              torch.zeros(n, dtype=torch.bool, device=device),
                              torch.zeros(n, device=device), torch.ones(n, device=device))
        self.offsets_in_batch = torch.arange(self.batch, device=device)
        # Device counters (mirrors of the host's step / position / EMA update count).
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self.step = torch.zeros((), dtype=torch.long, device=device)
        self.ema_updates = torch.zeros((), dtype=torch.long, device=device)
        multipliers = [trainer.schedule.multiplier(s) for s in range(trainer.total_steps)]
        self.multipliers = torch.tensor(multipliers, dtype=torch.float32, device=device)
        # Outputs read by the host at poll points.
        self.loss = torch.zeros((), device=device)
        self.terms = torch.zeros(2, device=device)      # [loss/total, loss/cross_entropy] of the last step
        self.terms_sum = torch.zeros(2, device=device)  # their sum over the epoch's finite steps
        self.finite_steps = torch.zeros((), dtype=torch.long, device=device)
        self.first_nonfinite_step = torch.full((), -1, dtype=torch.long, device=device)
        self.groups = [self._group(g) for g in trainer.optimizer.param_groups]
        self.graph: torch.cuda.CUDAGraph | None = None

    def _group(self, group: dict) -> dict:
        state = self.trainer.optimizer.state
        for p in group["params"]:  # momentum buffers must exist before capture (static addresses)
            if "momentum_buffer" not in state[p]:
                state[p]["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return {"params": list(group["params"]), "buffers": [state[p]["momentum_buffer"] for p in group["params"]],
                "base_lr": float(group["base_lr"]), "scheduled": bool(group.get("scheduled", True)),
                "momentum": float(group["momentum"]), "wc": float(group["wc"]),
                "nesterov": bool(group.get("nesterov", False))}

    # ------------------------------------------------------------------ host side
    def start_epoch(self, plan: EpochPlan, first_step_in_epoch: int) -> None:
        """Load an epoch's plan into the static buffers and set the counters (host state is the truth)."""
        for static, new in zip(_fields(self.plan), _fields(plan)):
            # a held-out phase-1 epoch (cuda-convnet's methodology) visits fewer images: its rows come first
            static[:new.shape[0]].copy_(new, non_blocking=True)
        self.position.fill_(first_step_in_epoch * self.batch)
        self.step.fill_(self.trainer.state.step)
        ema = self.trainer.ema
        self.ema_updates.fill_(ema.num_updates if ema is not None else 0)

    def run(self) -> None:
        """One training step (captured on first use when ``capture``)."""
        if self.capture and self.graph is None:
            self.capture_graph()
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    def reset_loss_sum(self) -> None:
        self.terms_sum.zero_()
        self.finite_steps.zero_()

    def warm_up(self, steps: int = WARMUP_STEPS) -> None:
        """Run ``steps`` steps and undo them: compilation, cuDNN's algorithm search and other lazy
        initialization happen here instead of inside the timed run or a graph capture."""
        saved = [t.detach().clone() for t in self._state_tensors()]
        if self.trainer.device.type == "cuda":
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(steps):
                    self._step()
            torch.cuda.current_stream().wait_stream(side)
        else:
            for _ in range(steps):
                self._step()
        with torch.no_grad():
            for t, s in zip(self._state_tensors(), saved):
                t.copy_(s)
        self.trainer.optimizer.zero_grad(set_to_none=True)

    def capture_graph(self) -> None:
        """Warm up, then record one step as a CUDA graph (replayed by :meth:`run`)."""
        self.warm_up()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except RuntimeError as exc:  # e.g. an op that synchronizes; the eager and fused steps still work
            raise LocalconvError(f"--step graph: capturing the training step as a CUDA graph failed ({exc}); "
                                 "use --step fused") from exc
        self.graph = graph

    def _state_tensors(self) -> list[torch.Tensor]:
        trainer = self.trainer
        tensors = list(trainer.model.parameters()) + list(trainer.model.buffers())
        tensors += [b for g in self.groups for b in g["buffers"]]
        if trainer.ema is not None:
            tensors += list(trainer.ema.model.parameters()) + list(trainer.ema.model.buffers())
        return tensors + [self.position, self.step, self.ema_updates, self.loss, self.terms, self.terms_sum,
                          self.finite_steps, self.first_nonfinite_step]

    # ------------------------------------------------------------------ device side
    def _step(self) -> None:
        trainer = self.trainer
        rows = self.position + self.offsets_in_batch
        plan = EpochPlan(*(t[rows] for t in _fields(self.plan)))
        mean = trainer.model.pixel_mean if trainer.model.needs_pixel_mean() else None
        x = train_batch(self.images[plan.order], plan, self.spec, mean)
        x = x.contiguous(memory_format=torch.channels_last)  # the model's layout (see Trainer)
        for p in trainer.model.parameters():  # backward assigns fresh gradients (graph-pool memory when captured)
            p.grad = None
        with torch.autocast(trainer.device.type, dtype=torch.bfloat16, enabled=trainer.amp, cache_enabled=False):
            logits = trainer.forward(x)
        loss, terms = trainer.loss_terms(logits, self.labels[plan.order])
        loss.backward()
        with torch.no_grad():
            self._update()
            finite = torch.isfinite(loss)
            self.loss.copy_(loss)
            self.terms.copy_(terms)
            self.terms_sum.add_(torch.where(finite, terms, torch.zeros_like(terms)))
            self.finite_steps.add_(finite.long())
            first_bad = (self.first_nonfinite_step < 0) & ~finite
            self.first_nonfinite_step.copy_(torch.where(first_bad, self.step, self.first_nonfinite_step))
            self.position.add_(self.batch)
            self.step.add_(1)

    def _update(self) -> None:
        # cuda-convnet's rule (optim.ConvNetSGD): inc = momentum * inc - lr * (grad + wc * W); W += inc
        # (nesterov: W += momentum * inc - lr * (grad + wc * W))
        last = self.multipliers.numel() - 1
        # index_select, not multipliers[step]: indexing with a 0-dim tensor reads the index on the host
        multiplier = self.multipliers.index_select(0, self.step.clamp(max=last).view(1)).view(())
        for g in self.groups:
            params = [p for p in g["params"] if p.grad is not None]
            if not params:
                continue
            buffers = [b for p, b in zip(g["params"], g["buffers"]) if p.grad is not None]
            grads = [p.grad for p in params]  # fresh every step and read by nothing else: used as scratch
            if g["wc"]:
                torch._foreach_add_(grads, params, alpha=g["wc"])
            torch._foreach_mul_(grads, multiplier * -g["base_lr"] if g["scheduled"] else -g["base_lr"])
            torch._foreach_mul_(buffers, g["momentum"])
            torch._foreach_add_(buffers, grads)
            if g["nesterov"]:
                torch._foreach_add_(grads, buffers, alpha=g["momentum"])
                torch._foreach_add_(params, grads)
            else:
                torch._foreach_add_(params, buffers)
        ema = self.trainer.ema
        if ema is not None:  # shadow += (1 - decay) * (live - shadow), decay with TF's num_updates warm-up
            # 1 - decay computed directly (1 - min(d, (1+t)/(10+t)) = max(1-d, 9/(10+t))): in float32,
            # 1 - 0.9999 would be off by 1.7e-4 relative
            t = self.ema_updates.float()
            step_size = (torch.clamp(9.0 / (10.0 + t), min=1.0 - ema.decay) if ema.warmup
                         else torch.full_like(t, 1.0 - ema.decay))
            shadow = list(ema.model.parameters())
            live = [p.detach() for p in self.trainer.model.parameters()]
            torch._foreach_lerp_(shadow, live, [step_size] * len(shadow))  # one 0-dim weight for every tensor
            for sb, b in zip(ema.model.buffers(), self.trainer.model.buffers()):
                sb.copy_(b)
            self.ema_updates.add_(1)


def _fields(plan: EpochPlan) -> tuple[torch.Tensor, ...]:
    return plan.order, plan.offsets, plan.flips, plan.brightness, plan.contrast
