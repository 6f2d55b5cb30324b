"""The device-side training step (--step fused / graph) against the eager step."""
import json

import pytest
import torch

from localconv.errors import LocalconvError
from localconv.training.engine import Callback, NonFiniteLoss
from test_engine import make_trainer, weights

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA GPU")


def assert_close_state(a, b, tol=1e-4):
    # Relative to each tensor's norm: ReLU and max-pool ties can flip under rounding differences, which
    # moves single elements of tiny-initialized layers (cc-11pct's conv1 starts at std 1e-4) far more
    # than the tensor as a whole.
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        scale = wa[k].float().norm().clamp_min(1e-12)
        assert ((wa[k].float() - wb[k].float()).norm() / scale).item() <= tol, k


@pytest.mark.parametrize("model_name,recipe,steps", [("tf-tutorial", "original", 6), ("tf-tutorial", "fast", 6),
                                                     ("cc-11pct", "original", 5), ("cc-11pct", "fast", 6)])
def test_fused_step_matches_eager(fake_cifar, tmp_path, model_name, recipe, steps):
    # Same data order, augmentation, schedule, momentum/decay per group and EMA: only the order of
    # floating-point operations differs, so the weights agree to rounding across an epoch boundary
    # (4 steps). cc-11pct's original recipe keeps conv1 near its 1e-4 init, where rounding differences
    # flip ReLU/pooling ties and grow quickly (docs/speed.md), so it is compared one step earlier.
    opts = dict(model_name=model_name, recipe=recipe, epochs=steps / 4, batch_size=24, limit_train=96)
    eager = make_trainer(fake_cifar, tmp_path / "eager", step="eager", **opts)
    fused = make_trainer(fake_cifar, tmp_path / "fused", step="fused", **opts)
    eager.fit()
    fused.fit()
    assert fused.step_mode == "fused" and fused.fused is not None and eager.fused is None
    assert fused.state.step == eager.state.step == steps
    assert_close_state(eager.model, fused.model)
    if eager.ema is not None:
        assert_close_state(eager.ema.model, fused.ema.model)
    assert fused.ema is None or fused.ema.num_updates == eager.ema.num_updates == steps
    # logged epoch losses and the host copy of the learning rate agree too
    for ra, rb in zip(eager.state.history, fused.state.history):
        assert ra["loss/total"] == pytest.approx(rb["loss/total"], rel=1e-4) and ra["lr"] == rb["lr"]
    # momentum buffers are the optimizer's own state, saved in the same format
    ma = [eager.optimizer.state[p]["momentum_buffer"] for p in eager.model.parameters()]
    mb = [fused.optimizer.state[p]["momentum_buffer"] for p in fused.model.parameters()]
    for x, y in zip(ma, mb):
        assert ((x - y).norm() / x.norm().clamp_min(1e-12)).item() <= 1e-3


def test_fused_ema_without_warm_up_matches_eager(fake_cifar, tmp_path):
    # No recipe turns TF's num_updates warm-up off today; the fused step's other branch must still agree,
    # and exactly so: 1 - 0.9999 is formed in double precision on both sides.
    runs = {}
    for step in ("eager", "fused"):
        runs[step] = make_trainer(fake_cifar, tmp_path / step, step=step, epochs=1.5, batch_size=24)
        runs[step].ema.warmup = False
        runs[step].fit()
    assert_close_state(runs["eager"].ema.model, runs["fused"].ema.model, tol=1e-6)


def test_fused_step_really_trains_and_differs_from_init(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "run", step="fused", epochs=3, batch_size=24, lr=0.05)
    before = weights(t.model)
    state = t.fit()
    after = weights(t.model)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    losses = [r["loss/total"] for r in state.history]
    assert losses[-1] < losses[0]


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def after_step(self, trainer, loss):
        assert loss.dim() == 0 and torch.isfinite(loss)
        if trainer.state.step == self.step:
            trainer.should_stop = True


def test_fused_mid_epoch_stop_and_resume_is_exact(fake_cifar, tmp_path):
    straight = make_trainer(fake_cifar, tmp_path / "a", step="fused", epochs=2, batch_size=24)
    straight.fit()
    stopped = make_trainer(fake_cifar, tmp_path / "b", step="fused", epochs=2, batch_size=24, callbacks=[StopAt(6)])
    stopped.fit()
    assert json.loads((tmp_path / "b" / "run.json").read_text())["step"] == 6
    resumed = make_trainer(fake_cifar, tmp_path / "b", step="fused", epochs=2, batch_size=24, resume=True)
    resumed.fit()
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_of_a_fused_run_resumes_eagerly(fake_cifar, tmp_path):
    first = make_trainer(fake_cifar, tmp_path / "b", step="fused", epochs=1, batch_size=24)
    first.fit()
    resumed = make_trainer(fake_cifar, tmp_path / "b", step="eager", epochs=2, batch_size=24, resume=True)
    assert resumed.fit().step == 8


def test_fused_nonfinite_loss_stops_before_the_checkpoint(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "run", step="fused", epochs=3, batch_size=24, lr=0.05)
    t.fit()  # 12 steps, a good checkpoint at step 12
    blown = make_trainer(fake_cifar, tmp_path / "run", step="fused", epochs=6, batch_size=24, lr=0.05,
                         resume=True)
    with torch.no_grad():
        blown.model.conv1.weight.fill_(float("inf"))
    with pytest.raises(NonFiniteLoss) as info:
        blown.fit()
    message = str(info.value)
    assert "non-finite at step 12" in message and "checkpoint (step 12) is kept" in message
    assert "--step eager" in message
    assert json.loads((tmp_path / "run" / "run.json").read_text())["step"] == 12


class GradientHook(Callback):
    def after_backward(self, trainer, loss):
        pass


def test_step_mode_resolution(fake_cifar, tmp_path):
    assert make_trainer(fake_cifar, tmp_path / "a", batch_size=24).step_mode == "eager"  # auto on the CPU
    assert make_trainer(fake_cifar, tmp_path / "b", batch_size=24, step="fused").step_mode == "fused"
    with pytest.raises(LocalconvError, match="--step fused cannot be used with --skip-nonfinite"):
        make_trainer(fake_cifar, tmp_path / "c", batch_size=24, step="fused", skip_nonfinite=True)
    with pytest.raises(LocalconvError, match="GradientHook"):
        make_trainer(fake_cifar, tmp_path / "d", batch_size=24, step="fused", callbacks=[GradientHook()])
    with pytest.raises(LocalconvError, match="needs a CUDA device"):
        make_trainer(fake_cifar, tmp_path / "e", batch_size=24, step="graph")
    with pytest.raises(LocalconvError, match="--step must be one of"):
        make_trainer(fake_cifar, tmp_path / "f", batch_size=24, step="turbo")


@cuda_only
@pytest.mark.parametrize("model_name", ["tf-tutorial", "cc-11pct"])
def test_cuda_graph_step_matches_fused_step(fake_cifar, tmp_path, model_name):
    opts = dict(model_name=model_name, recipe="fast", epochs=2, batch_size=24, device="cuda", amp=False)
    fused = make_trainer(fake_cifar, tmp_path / "fused", step="fused", **opts)
    graph = make_trainer(fake_cifar, tmp_path / "graph", step="graph", **opts)
    fused.fit()
    graph.fit()
    assert graph.fused.graph is not None
    assert_close_state(fused.model, graph.model, tol=1e-3)


class NoHostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Fails on any op that copies a device value to the host (what .item(), bool(t) or t[t0] do)."""

    SYNCING = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "allclose"}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in self.SYNCING:
            raise AssertionError(f"the fused step reads a device value on the host ({name})")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model_name,recipe,amp", [("tf-tutorial", "fast", True), ("cc-11pct", "fast", True),
                                                   ("cc-11pct", "original", False)])
def test_fused_step_never_reads_device_values_on_the_host(fake_cifar, tmp_path, model_name, recipe, amp):
    # What a CUDA graph cannot capture and what stalls the GPU queue; checked on the CPU at the op level,
    # so it also catches reads hidden inside PyTorch (indexing with a 0-dim tensor calls .item()).
    from localconv.data.augment import draw_epoch_plan
    from localconv.training.fused_step import FusedStep

    t = make_trainer(fake_cifar, tmp_path / "run", model_name=model_name, recipe=recipe, step="fused",
                     batch_size=24, epochs=1, amp=amp)
    step = FusedStep(t, capture=False)
    step.start_epoch(draw_epoch_plan(96, t.model.input_spec, 0, 0), 0)
    before = weights(t.model)
    with NoHostReads():
        step.run()
        step.run()
    assert int(step.step) == 2 and int(step.position) == 48 and int(step.first_nonfinite_step) == -1
    assert any(not torch.equal(before[k], v) for k, v in weights(t.model).items())
    with pytest.raises(AssertionError, match="reads a device value"), NoHostReads():
        step.loss.item()


def test_warm_up_steps_leave_no_trace(fake_cifar, tmp_path):
    # What a graph capture (and torch.compile) does first: run steps, then undo them exactly.
    plain = make_trainer(fake_cifar, tmp_path / "a", step="fused", epochs=2, batch_size=24)
    warmed = make_trainer(fake_cifar, tmp_path / "b", step="fused", epochs=2, batch_size=24)
    assert warmed.warm_up() >= 0.0
    before = weights(warmed.model)
    warmed.fused.warm_up(3)
    assert all(torch.equal(before[k], v) for k, v in weights(warmed.model).items())
    assert int(warmed.fused.step) == 0 and int(warmed.fused.position) == 0
    plain.fit()
    warmed.fit()
    a, b = weights(plain.model), weights(warmed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = plain.ema.state_dict(), warmed.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


@pytest.mark.slow
def test_torch_compile_on_the_cpu_trains_like_eager(fake_cifar, tmp_path):
    # Inductor on the CPU (the local layers stay opaque, see nn/functional.py); 2 steps, compiled vs not.
    torch._dynamo.reset()
    opts = dict(model_name="cc-11pct", recipe="fast", epochs=0.5, batch_size=24, step="fused")
    plain = make_trainer(fake_cifar, tmp_path / "plain", **opts)
    plain.fit()
    compiled = make_trainer(fake_cifar, tmp_path / "compiled", compile=True, **opts)
    assert compiled.warm_up() > 0
    compiled.fit()
    assert compiled.state.step == plain.state.step == 2
    assert_close_state(plain.model, compiled.model, tol=1e-4)
