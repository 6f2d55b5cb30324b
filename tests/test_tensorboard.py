"""TensorBoard callback: event files readable back, scalars + histograms present, NaN-safe."""
import json
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
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "images": 0})
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
    for tag in ("loss/total", "loss/cross_entropy", "train/lr", "train/images_per_s", "epoch/loss/total",
                "epoch/loss/cross_entropy", "epoch/accuracy/test", "epoch/images_per_s", "epoch/lr",
                "layers/conv2/dead_frac", "layers/conv2/update_ratio", "layers/conv1/act_std",
                "layers/conv2/sparsity"):
        assert tag in tags["scalars"], tag
    assert not [t for t in tags["scalars"] if t in ("train/loss", "epoch/loss", "epoch/accuracy")]
    for tag in ("weights/conv2.weight", "gradients/conv2.weight", "activations/conv2", "activation_grads/local3",
                "weights/softmax_linear.bias"):
        assert tag in tags["histograms"], tag
    ce, total = acc.Scalars("loss/cross_entropy"), acc.Scalars("loss/total")
    assert [e.step for e in ce] == [1, 3, 5, 7]  # every 2 steps, counted as steps done
    assert abs(ce[0].value - trainer.callbacks[0].monitor.history.losses[0][1]) < 1e-5  # plain cross-entropy
    # the total adds the weight-decay term of local3/local4: what metrics.jsonl and compare call loss/total
    assert total[0].value > ce[0].value + 0.1
    hist = acc.Histograms("weights/conv2.weight")[0].histogram_value
    assert hist.num == trainer.model.conv2.weight.numel()
    assert [e.step for e in acc.Scalars("epoch/accuracy/test")] == [4, 8]
    epoch_total = [e.value for e in acc.Scalars("epoch/loss/total")]
    assert epoch_total == pytest.approx([r["loss/total"] for r in trainer.state.history], rel=1e-5)


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


def test_sparsity_and_input_images(tmp_path):
    train(tmp_path, TensorBoardCallback(tmp_path / "tb", every=2, histograms=False), steps=4)
    acc = read_events(tmp_path / "tb")
    for layer in ("conv1", "conv2", "local3", "local4"):  # ReLU layers: some zeros, at least the dead units
        sparsity = [e.value for e in acc.Scalars(f"layers/{layer}/sparsity")]
        dead = [e.value for e in acc.Scalars(f"layers/{layer}/dead_frac")]
        assert all(0 < s < 1 and s >= d for s, d in zip(sparsity, dead)), (layer, sparsity, dead)
    # the logits have no rectifier: (almost) never exactly zero
    assert max(e.value for e in acc.Scalars("layers/softmax_linear/sparsity")) < 0.01
    assert "weights/conv2.weight" not in acc.Tags()["histograms"]
    # a few training images as the network sees them (24x24 crops) and as they are (32x32), in a row of 8
    assert {"inputs/train_augmented", "inputs/train_original"} <= set(acc.Tags()["images"])
    seen, original = acc.Images("inputs/train_augmented")[0], acc.Images("inputs/train_original")[0]
    assert (seen.width, seen.height) == (8 * 24, 24) and (original.width, original.height) == (8 * 32, 32)
    assert seen.encoded_image_string != original.encoded_image_string


def test_default_interval_gives_a_short_run_several_points(tmp_path):
    trainer = train(tmp_path, TensorBoardCallback(tmp_path / "tb", histograms=False), steps=4)
    acc = read_events(tmp_path / "tb")
    assert [e.step for e in acc.Scalars("loss/total")] == [1, 2, 3, 4]  # every step (old default: step 1 only)
    assert len(acc.Scalars("layers/conv1/signal")) == 4
    lines = (trainer.run_dir / "metrics.jsonl").read_text().splitlines()
    steps = [r for r in map(json.loads, lines) if r["kind"] == "step"]  # metrics.jsonl adapts the same way
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    assert all(r["loss/total"] > r["loss/cross_entropy"] > 0 for r in steps)
