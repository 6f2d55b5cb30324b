import json

import pytest
import torch

import localconv
from localconv.data.loader import select_splits
from localconv.errors import CheckpointError, LocalconvError
from localconv.training import checkpoint as ckpt
from localconv.training.engine import Callback, Trainer, TrainOptions


def make_trainer(fake, run_dir, model_name="tf-tutorial", resume=False, callbacks=(), **opts):
    tx, ty, sx, sy = fake
    splits = select_splits(tx, ty, sx, sy, limit_train=opts.pop("limit_train", 96), val_split=opts.pop("val", 0))
    torch.manual_seed(opts.pop("init_seed", 0))
    model = localconv.create_model(model_name)
    options = TrainOptions(device="cpu", progress=False, **opts)
    return Trainer(model, splits, run_dir, options, data_info={"args": {}}, resume=resume, callbacks=callbacks)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_reduces_loss_and_writes_a_run(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "run", epochs=3, batch_size=24, lr=0.05)
    state = t.fit()
    assert state.step == 3 * 4
    losses = [r["loss/total"] for r in state.history]
    assert losses[-1] < losses[0]
    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    assert meta["complete"] and meta["step"] == 12 and set(meta["files"]) == {"model", "ema", "optimizer", "best"}
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1.0, 2.0, 3.0]
    # only the last checkpoint's files remain
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == sorted(
        ["run.json", "metrics.jsonl", *meta["files"].values()])
    model, meta2 = localconv.load_run(tmp_path / "run")
    ema = t.ema.model.state_dict()
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("step", ["eager", "fused"])
def test_resume_is_exact(fake_cifar, tmp_path, step):
    straight = make_trainer(fake_cifar, tmp_path / "a", epochs=3, batch_size=24, step=step)
    straight.fit()
    first = make_trainer(fake_cifar, tmp_path / "b", epochs=1, batch_size=24, step=step)
    first.fit()
    resumed = make_trainer(fake_cifar, tmp_path / "b", epochs=3, batch_size=24, resume=True, init_seed=99,
                           step=step)
    resumed.fit()
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ea, eb = straight.ema.state_dict(), resumed.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)


class StopAfter(Callback):
    def __init__(self, steps):
        self.steps = steps

    def after_step(self, trainer, loss):
        if trainer.state.step == self.steps:
            trainer.should_stop = True
            trainer.stop_reason = "interrupted"


def test_resume_from_a_mid_epoch_checkpoint_is_exact(fake_cifar, tmp_path):
    straight = make_trainer(fake_cifar, tmp_path / "a", epochs=2, batch_size=24, model_name="tf-tutorial-conv")
    straight.fit()
    cut = make_trainer(fake_cifar, tmp_path / "b", epochs=2, batch_size=24, model_name="tf-tutorial-conv",
                       callbacks=[StopAfter(6)])
    cut.fit()
    meta = ckpt.read_meta(tmp_path / "b")
    assert meta["step"] == 6 and not meta["complete"]
    resumed = make_trainer(fake_cifar, tmp_path / "b", epochs=2, batch_size=24, model_name="tf-tutorial-conv",
                           resume=True)
    resumed.fit()
    a, b = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_checkpoint_write_keeps_the_previous_one(fake_cifar, tmp_path, monkeypatch):
    t = make_trainer(fake_cifar, tmp_path / "run", epochs=2, batch_size=24, model_name="tf-tutorial-conv")
    t.fit()
    before = (tmp_path / "run" / "run.json").read_text()

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        t.save()
    assert (tmp_path / "run" / "run.json").read_text() == before
    localconv.load_run(tmp_path / "run")  # still loads and verifies
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]


def test_corrupt_or_foreign_checkpoints_are_clear_errors(fake_cifar, tmp_path):
    t = make_trainer(fake_cifar, tmp_path / "run", epochs=1, batch_size=24, model_name="tf-tutorial-conv")
    t.fit()
    meta = ckpt.read_meta(tmp_path / "run")
    with pytest.raises(CheckpointError, match="checkpoint is for model"):
        make_trainer(fake_cifar, tmp_path / "run", epochs=2, batch_size=24, resume=True)
    weights_file = tmp_path / "run" / meta["files"]["ema"]
    weights_file.write_bytes(weights_file.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        localconv.load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="no run.json"):
        localconv.load_run(tmp_path)
    (tmp_path / "run" / "run.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable run metadata"):
        localconv.load_run(tmp_path / "run")


def test_bad_options_are_user_errors(fake_cifar, tmp_path):
    with pytest.raises(LocalconvError, match="batch-size"):
        make_trainer(fake_cifar, tmp_path / "r", batch_size=0)
    with pytest.raises(LocalconvError, match="epochs"):
        make_trainer(fake_cifar, tmp_path / "r", epochs=-1)
    with pytest.raises(LocalconvError, match="larger than"):
        make_trainer(fake_cifar, tmp_path / "r", batch_size=1000)
    assert not (tmp_path / "r").exists()


def test_nonfinite_loss_stops_or_skips(fake_cifar, tmp_path):
    from localconv.training.engine import NonFiniteLoss

    t = make_trainer(fake_cifar, tmp_path / "run", epochs=1, batch_size=24, lr=1e6, model_name="tf-tutorial-conv")
    with pytest.raises(NonFiniteLoss, match=r"at step \d+, first non-finite in layer \w+"):
        t.fit()
    t2 = make_trainer(fake_cifar, tmp_path / "run2", epochs=1, batch_size=24, lr=1e6, model_name="tf-tutorial-conv",
                      skip_nonfinite=True)
    state = t2.fit()
    assert state.skipped_steps > 0
