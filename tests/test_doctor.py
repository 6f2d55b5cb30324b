"""`localconv doctor` end to end: the 2016 conv2 init bug on real data, its fix, cfg models, bad input."""
import json
import re
from pathlib import Path

import pytest

from localconv.cli.main import main

CFG_FILES = Path(__file__).resolve().parents[1] / "src" / "localconv" / "configs" / "files"


@pytest.fixture(scope="session")
def cifar_cache(tmp_path_factory):
    """One decoded-data cache for the whole session: the 60k JPEGs are decoded once."""
    return tmp_path_factory.mktemp("doctor-cache")


def doctor(capsys, *args):
    capsys.readouterr()
    code = main(["doctor", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def verdict_layers(out: str) -> set[str]:
    match = re.search(r"verdict: \d+ problems? found \(layers: ([^)]*)\)", out)
    return set(match.group(1).split(", ")) if match else set()


def cc_files(tmp_path: Path, conv2_init: str | None = None) -> list[str]:
    """cc-11pct's layer and parameter files, with conv2's initW replaced if asked."""
    layers = (CFG_FILES / "cc-11pct.layers.cfg").read_text()
    if conv2_init is not None:
        layers, n = re.subn(r"(\[conv2\][^\[]*?initW=)[0-9.e-]+", rf"\g<1>{conv2_init}", layers)
        assert n == 1
    (tmp_path / "layers.cfg").write_text(layers)
    (tmp_path / "params.cfg").write_text((CFG_FILES / "cc-11pct.params.cfg").read_text())
    return ["--cfg", str(tmp_path / "layers.cfg"), "--params", str(tmp_path / "params.cfg")]


@pytest.mark.slow
@pytest.mark.realdata
def test_the_2016_conv2_init_bug_is_named(shared_jpeg, cifar_cache, capsys):
    code, out, _ = doctor(capsys, "--model", "tf-tutorial", "--conv2-std", "1e-4", "--data", str(shared_jpeg),
                          "--device", "cpu", "--cache-dir", str(cifar_cache))
    assert code == 1, out
    assert verdict_layers(out) == {"conv2"}, out
    assert "[warning] conv2: conv2's initial weights" in out and "gradients vanish from conv2 down" in out


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("std", ["1e-2", "5e-2"])
def test_the_fixed_init_is_healthy(std, shared_jpeg, cifar_cache, capsys):
    code, out, _ = doctor(capsys, "--model", "tf-tutorial", "--conv2-std", std, "--data", str(shared_jpeg),
                          "--device", "cpu", "--cache-dir", str(cifar_cache))
    assert code == 0, out
    assert "verdict: healthy" in out


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("conv2_init, expected", [("0.0001", 1), (None, 0)])
def test_cfg_models_from_cuda_convnet_files(conv2_init, expected, shared_jpeg, cifar_cache, tmp_path, capsys):
    code, out, _ = doctor(capsys, *cc_files(tmp_path, conv2_init), "--data", str(shared_jpeg), "--device", "cpu",
                          "--cache-dir", str(cifar_cache), "--json")
    report = json.loads(out)
    assert code == expected == report["exit_code"], json.dumps(report["findings"], indent=1)
    problems = {f["layer"] for f in report["findings"] if f["severity"] in ("error", "warning")}
    assert problems == ({"conv2"} if expected else set())
    # conv1's initW 1e-4 is by design (raw pixels minus the mean): never a finding
    assert report["layers"]["conv1"]["start"]["in_rms"] > 20


@pytest.mark.parametrize("lr_scale", ["0.1", "10"])
def test_cfg_verdict_does_not_depend_on_its_learning_rates(lr_scale, tmp_path, capsys):
    """The init problem is judged on signals, not on how fast the cfg's epsW lets training go."""
    from cifar_fixtures import CLASSES, Arrays, write_image_tree
    from conftest import synthetic_cifar

    data = write_image_tree(tmp_path / "data", Arrays(*synthetic_cifar(n_train=96, n_test=60, seed=1), CLASSES))
    code, out, _ = doctor(capsys, *cc_files(tmp_path, "0.0001"), "--data", str(data), "--cache-dir",
                          str(tmp_path / "cache"), "--device", "cpu", "--steps", "6", "--batch-size", "16",
                          "--val-images", "16", "--lr-scale", lr_scale, "--json")
    report = json.loads(out)
    assert code == 1
    assert {"init_too_small", "vanishing_gradients"} <= {f["kind"] for f in report["findings"]
                                                        if f["layer"] == "conv2"}
    init = next(f for f in report["findings"] if f["kind"] == "init_too_small")
    assert f"In {tmp_path / 'layers.cfg'}: initW=" in init["fix"] and "in [conv2]" in init["fix"]


def test_small_data_is_split_honestly_and_the_fix_is_a_flag(tmp_path, capsys):
    """96 images: a fifth held out, 'trained on N, held out M' said, too few to judge; the init fix as --conv2-std."""
    from cifar_fixtures import CLASSES, Arrays, write_image_tree
    from conftest import synthetic_cifar

    data = write_image_tree(tmp_path / "data", Arrays(*synthetic_cifar(n_train=96, n_test=60, seed=1), CLASSES))
    code, out, _ = doctor(capsys, "--model", "tf-tutorial-conv", "--conv2-std", "1e-4", "--data", str(data),
                          "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--steps", "6",
                          "--batch-size", "16")
    assert code == 1
    assert "trained on 77 images, held out 19" in out, out  # a fifth of 96 held out
    assert "[warning] model: trained on only 77 images" in out
    assert "With localconv: --conv2-std 0.0" in out  # the std the fix suggests, as the option that sets it


@pytest.mark.parametrize("args, words", [
    (["--model", "no-such-model"], "no-such-model"),
    (["--cfg", "/nonexistent/layers.cfg"], "layers.cfg"),
    (["--model", "tf-tutorial", "--data", "/nonexistent/data"], "/nonexistent/data"),
    ([], "--model"),
])
def test_bad_input_exits_2_with_one_line(args, words, capsys):
    code, out, err = doctor(capsys, *args, "--device", "cpu")
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_bad_numbers_are_rejected_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["doctor", "--model", "tf-tutorial", "--steps", "0"])
    assert exc.value.code == 2


def test_train_stop_on_problem_exits_1_after_a_checkpoint(tmp_path, capsys):
    from cifar_fixtures import CLASSES, Arrays, write_image_tree
    from conftest import synthetic_cifar

    data = write_image_tree(tmp_path / "data", Arrays(*synthetic_cifar(n_train=96, n_test=60, seed=1), CLASSES))
    run = tmp_path / "run"
    code = main(["train", "--model", "tf-tutorial-conv", "--conv2-std", "1e-4", "--data", str(data), "--cache-dir",
                 str(tmp_path / "cache"), "--out", str(run), "--epochs", "2", "--batch-size", "16", "--device", "cpu",
                 "--no-progress", "--stop-on-problem"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "watch: warning: conv2: conv2's initial weights" in err and "stopped at step 1" in err
    meta = json.loads((run / "run.json").read_text())
    assert meta["step"] == 1 and meta["stop_reason"] == "problem: init_too_small in conv2"


def test_doctor_prints_only_its_report(tmp_path, capsys):
    """No training line (the engine's "epoch ...: loss ..., accuracy ...") before the report, on either stream."""
    from cifar_fixtures import CLASSES, Arrays, write_image_tree
    from conftest import synthetic_cifar

    data = write_image_tree(tmp_path / "data", Arrays(*synthetic_cifar(n_train=96, n_test=60, seed=1), CLASSES))
    code, out, err = doctor(capsys, "--model", "tf-tutorial-conv", "--data", str(data), "--cache-dir",
                            str(tmp_path / "cache"), "--device", "cpu", "--steps", "4", "--batch-size", "16",
                            "--val-images", "16")
    assert code in (0, 1)
    assert out.startswith("localconv doctor: tf-tutorial-conv"), out
    assert "held-out accuracy" in out  # the run was evaluated: the engine had an epoch line to print
    assert "epoch" not in err and "epoch" not in out.splitlines()[0], err
