"""TensorBoard callback: event files readable back, scalars + histograms present, NaN-safe."""
from pathlib import Path

import pytest
import torch

import localconv
from localconv.data.loader import select_splits
from localconv.training.engine import NonFiniteLoss, Trainer, TrainOptions

from conftest import synthetic_cifar

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from localconv.reports.tensorboard import TensorBoardCallback  # noqa: E402


def read_events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def train(tmp_path, callback, lr=None, steps=8, skip_nonfinite=False):
    tx, ty, sx, sy = synthetic_cifar(n_train=128, n_test=16)
    splits = select_splits(tx, ty, sx, sy)
    torch.manual_seed(0)
    model = localconv.create_model("tf-tutorial-conv")
    options = TrainOptions(device="cpu", progress=False, epochs=steps / 4, batch_size=32, lr=lr,
                           skip_nonfinite=skip_nonfinite)
    trainer = Trainer(model, splits, tmp_path / "run", options, callbacks=[callback])
    try:
        trainer.fit()
    finally:
        callback.close()
    return trainer


def test_scalars_and_histograms_are_written(tmp_path):
    trainer = train(tmp_path, TensorBoardCallback(tmp_path / "tb", every=2))
    acc = read_events(tmp_path / "tb")
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/images_per_s", "epoch/loss", "epoch/accuracy",
                "epoch/images_per_s", "layers/conv2/dead_frac", "layers/conv2/update_ratio", "layers/conv1/act_std"):
        assert tag in tags["scalars"], tag
    for tag in ("weights/conv2.weight", "gradients/conv2.weight", "activations/conv2", "activation_grads/local3",
                "weights/softmax_linear.bias"):
        assert tag in tags["histograms"], tag
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 3, 5, 7]  # every 2 steps, counted as steps done
    assert abs(loss[0].value - trainer.callbacks[0].monitor.history.losses[0][1]) < 1e-6
    hist = acc.Histograms("weights/conv2.weight")[0].histogram_value
    assert hist.num == trainer.model.conv2.weight.numel()
    assert [e.step for e in acc.Scalars("epoch/accuracy")] == [4, 8]


def test_default_log_dir_is_the_run_folder(tmp_path):
    train(tmp_path, TensorBoardCallback(every=4), steps=4)
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))


def test_non_finite_values_are_counted_not_fatal(tmp_path, capsys):
    callback = TensorBoardCallback(tmp_path / "tb", every=1)
    with pytest.raises(NonFiniteLoss):
        train(tmp_path, callback, lr=1e7, steps=20)
    acc = read_events(tmp_path / "tb")
    bad = [t for t in acc.Tags()["scalars"] if t.startswith("nonfinite/")]
    assert bad, acc.Tags()["scalars"]
    assert sum(callback.nonfinite.values()) > 0
    assert "non-finite values were left out" in capsys.readouterr().err


def test_histogram_keeps_the_finite_part(tmp_path):
    callback = TensorBoardCallback(tmp_path / "tb")
    from localconv.reports.tensorboard import open_writer

    callback.writer = open_writer(tmp_path / "tb")
    callback.histogram("x", torch.tensor([1.0, float("nan"), 2.0, float("inf")]), step=0)
    callback.histogram("all_bad", torch.tensor([float("nan")]), step=0)
    callback.scalar("s", float("inf"), step=0)
    callback.close()
    acc = read_events(tmp_path / "tb")
    assert acc.Histograms("x")[0].histogram_value.num == 2
    assert "all_bad" not in acc.Tags()["histograms"]
    assert callback.nonfinite == {"x": 2, "all_bad": 1, "s": 1}
    assert {"nonfinite/x", "nonfinite/s", "nonfinite/all_bad"} <= set(acc.Tags()["scalars"])
