"""What makes `localconv doctor` quick must not change what it reads or says (issue 13):
decoding only the images it uses, the monitor's cheaper reductions, its thread count, no dynamo import."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cifar_fixtures import CLASSES, Arrays, make_arrays, write_image_tarballs, write_image_tree
from localconv.cli.main import main
from localconv.data import load_cifar10, load_training_subset
from localconv.data.formats import DatasetSource
from localconv.cli.doctor_recipe import run_doctor
from localconv.diagnostics.doctor import DoctorOptions, doctor_images
from localconv.diagnostics.monitor import _signal
from localconv.errors import DataError
from localconv.models import create_model


def _every_third(n: int) -> np.ndarray:
    return np.arange(n)[::-3]  # unsorted on purpose: positions come back sorted


@pytest.fixture()
def arrays() -> Arrays:
    return make_arrays(n_train=40, n_test=12, classes=list(CLASSES[:4]), seed=3)


@pytest.mark.parametrize("layout", ["tarballs", "folder"])
def test_subset_decodes_the_same_images_as_the_full_load(layout, arrays, tmp_path):
    data = (write_image_tarballs(tmp_path / "data", arrays, tmp_path / "scratch") if layout == "tarballs"
            else write_image_tree(tmp_path / "data", arrays))
    full = load_cifar10(data, cache_dir=tmp_path / "full-cache", progress=False)
    subset = load_training_subset(_every_third, data, cache_dir=tmp_path / "cold-cache", progress=False)
    positions = np.sort(_every_third(len(full.train_labels)))
    assert subset.total == len(full.train_labels) == 40
    np.testing.assert_array_equal(subset.positions, positions)
    np.testing.assert_array_equal(subset.images, full.train_images[positions])
    np.testing.assert_array_equal(subset.labels, full.train_labels[positions])
    assert subset.classes == full.classes
    # a subset is not the data: only a subset entry is written, used again for the same selection only
    (entry,) = (tmp_path / "cold-cache" / "decoded").iterdir()
    assert entry.name.endswith(".subset.npz")
    again = load_training_subset(_every_third, data, cache_dir=tmp_path / "cold-cache", progress=False)
    np.testing.assert_array_equal(again.images, subset.images)
    np.testing.assert_array_equal(again.positions, subset.positions)
    other = load_training_subset(lambda n: np.arange(2), data, cache_dir=tmp_path / "cold-cache", progress=False)
    np.testing.assert_array_equal(other.images, full.train_images[:2])


def test_the_subset_cache_is_used(arrays, tmp_path, monkeypatch):
    data = write_image_tarballs(tmp_path / "data", arrays, tmp_path / "scratch")
    first = load_training_subset(_every_third, data, cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(DatasetSource, "read_training_subset", _no_reading)
    again = load_training_subset(_every_third, data, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    with pytest.raises(AssertionError, match="read the source"):  # another selection is not in that entry
        load_training_subset(lambda n: np.arange(2), data, cache_dir=tmp_path / "cache", progress=False)


def _no_reading(*_args: object) -> None:
    raise AssertionError("read the source although the decoded cache was warm")


def test_subset_uses_a_warm_cache(arrays, tmp_path, monkeypatch):
    data = write_image_tarballs(tmp_path / "data", arrays, tmp_path / "scratch")
    full = load_cifar10(data, cache_dir=tmp_path / "cache", progress=False)
    monkeypatch.setattr(DatasetSource, "read_training_subset", _no_reading)
    subset = load_training_subset(_every_third, data, cache_dir=tmp_path / "cache", progress=False)
    np.testing.assert_array_equal(subset.images, full.train_images[subset.positions])


def test_subset_still_verifies_the_whole_archive(arrays, tmp_path):
    """A wrong gzip CRC (the last 8 bytes) is only seen by reading the stream to its end: still refused."""
    data = write_image_tarballs(tmp_path / "data", arrays, tmp_path / "scratch")
    archive = data / "train.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[-8] ^= 0xFF
    archive.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="train.tar.gz"):
        load_training_subset(lambda n: np.arange(1), data, cache_dir=tmp_path / "cache", progress=False)


def test_doctor_refuses_a_damaged_archive_with_a_cold_cache(arrays, tmp_path, capsys):
    data = write_image_tarballs(tmp_path / "data", arrays, tmp_path / "scratch")
    archive = data / "train.tar.gz"
    raw = bytearray(archive.read_bytes())
    raw[-8] ^= 0xFF
    archive.write_bytes(bytes(raw))
    code = main(["doctor", "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir", str(tmp_path / "c"),
                 "--device", "cpu", "--steps", "2", "--batch-size", "8", "--val-images", "8"])
    err = capsys.readouterr().err
    assert code == 2 and "train.tar.gz" in err, err


def test_doctor_on_its_subset_is_the_run_on_all_the_images(tmp_path):
    """run_doctor on the images doctor_images() names gives the report of the run on the whole set."""
    from conftest import synthetic_cifar

    images, labels, *_ = synthetic_cifar(n_train=120, n_test=8, seed=2)
    options = DoctorOptions(steps=6, batch_size=16, limit_train=48, val_images=24, every=2, device="cpu")
    keep = doctor_images(len(labels), options)
    assert len(keep) == 72
    reports = []
    for subset in (False, True):
        torch.manual_seed(0)
        model = create_model("tf-tutorial-conv", conv2_std=1e-4)
        if subset:
            reports.append(run_doctor(model, images[keep], labels[keep], options, subset_of=len(labels)))
        else:
            reports.append(run_doctor(model, images, labels, options))
    full, part = (r.to_dict() for r in reports)
    assert part == full
    with pytest.raises(Exception, match="doctor uses 72 of 120"):
        run_doctor(create_model("tf-tutorial-conv"), images[:10], labels[:10], options, subset_of=len(labels))


def test_doctor_sets_its_threads_and_restores_them(tmp_path):
    from conftest import synthetic_cifar

    images, labels, *_ = synthetic_cifar(n_train=40, n_test=8, seed=2)
    before = torch.get_num_threads()
    seen = []
    model = create_model("tf-tutorial-conv")
    model.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    run_doctor(model, images, labels, DoctorOptions(steps=1, batch_size=8, val_images=8, device="cpu", threads=1))
    assert seen and set(seen) == {1}
    assert torch.get_num_threads() == before


@pytest.mark.parametrize("shape", [(32, 64, 6, 6), (2, 5), (3, 4, 1)])
def test_monitor_signal_is_the_unbiased_std_across_images(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 3 + 1
    torch.testing.assert_close(_signal(x), x.flatten(1).var(dim=0).mean().sqrt())


def test_monitor_signal_of_a_constant_is_exactly_zero():
    """Exactly 0 as var gives (a rounded mean would leave noise): gains above a zeroed layer stay undefined."""
    x = torch.full((32, 7, 3, 3), 0.1) + torch.linspace(0, 5, 63).reshape(7, 3, 3)
    assert _signal(x).item() == 0.0


def test_optimizer_does_not_import_dynamo():
    """torch.optim's _disable_dynamo wrapper imports torch._dynamo (1-2 s) at the first add_param_group/zero_grad."""
    code = ("import sys, torch\n"
            "from localconv.training.optim import ConvNetSGD\n"
            "m = torch.nn.Linear(3, 2)\n"
            "o = ConvNetSGD([{'params': [m.weight], 'lr': 0.1}, {'params': [m.bias], 'lr': 0.2, 'momentum': 0.9}])\n"
            "m(torch.ones(4, 3)).sum().backward(); o.step(); o.zero_grad(); o.load_state_dict(o.state_dict())\n"
            "assert m.weight.grad is None and len(o.state_dict()['state']) == 2\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("others, expected", [(0.0, 2), (0.3, 2), (0.7, 1), (1.0, 1), (5.0, 1), (None, 2)])
def test_doctor_uses_one_thread_per_idle_core(others, expected, monkeypatch):
    """Spinning threads on busy cores cost several times the CPU time: other processes' load lowers the count."""
    from localconv.diagnostics import idle_cores

    clock = {"busy": 100.0, "own": 10.0, "wall": 50.0}
    monkeypatch.setattr(idle_cores, "_machine_busy_s", lambda: None if others is None else clock["busy"])
    monkeypatch.setattr(idle_cores, "_own_cpu_s", lambda: clock["own"])
    monkeypatch.setattr(idle_cores.time, "monotonic", lambda: clock["wall"])
    probe = idle_cores.IdleCores()
    clock["wall"] += 2.0
    clock["own"] += 1.9  # this process, loading the data on one core
    clock["busy"] += 1.9 + 2.0 * (others or 0.0)
    assert probe.threads(2) == expected
    assert probe.threads(1) == 1
