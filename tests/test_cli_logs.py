"""Issue 24, "Logs and pipes": plain log lines when stderr is not a terminal, a closed stdout ends quietly,
and the small things (plural, resume line, a non-image file, summary's own usage and run folders, help texts)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cifar_fixtures import Arrays, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import EXIT_STDOUT_CLOSED, build_parser, main


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    tx, ty, sx, sy = synthetic_cifar(n_train=100, n_test=20, seed=3, classes=4)
    root = tmp_path_factory.mktemp("logs-tree")
    return write_image_tree(root / "data", Arrays(tx, ty, sx, sy, ["a", "b", "c", "d"]))


@pytest.fixture(autouse=True)
def cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("LOCALCONV_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _no_terminal_control(text: str) -> None:
    assert "\r" not in text and "\x1b[" not in text, repr(text[:300])


@pytest.mark.slow
def test_train_log_is_plain_lines_with_epoch_and_step_lines(tree, tmp_path, capsys, monkeypatch):
    import localconv.training.plain_progress as plain_progress

    monkeypatch.setattr(plain_progress, "STEP_LINE_SECONDS", 0.0)  # every shown step gets a line
    run = tmp_path / "r"
    args = ["train", "--model", "tf-tutorial-conv", "--data", str(tree), "--out", str(run), "--batch-size", "10",
            "--device", "cpu", "--eval-every", "0"]
    assert main([*args, "--epochs", "1"]) == 0  # progress on: captured stderr is not a terminal
    out, err = capsys.readouterr()
    _no_terminal_control(out + err)
    assert "1 epoch = 10 steps" in err and "1 epochs" not in err
    assert "step 10/10 (epoch 1.00): loss/total " in err
    assert [line for line in out.splitlines() if line.startswith("epoch ")] == \
        [line for line in out.splitlines() if line.startswith("epoch 1.00: loss/total ")] != []
    # resumed: says where it starts; with --eval-every 0 a log still gets one line per epoch
    assert main(["train", "--out", str(run), "--resume", "--epochs", "2"]) == 0
    out, err = capsys.readouterr()
    _no_terminal_control(out + err)
    assert err.splitlines()[0] == "resuming from step 10 (epoch 1)"
    assert "2 epochs = 20 steps" in err
    epoch_lines = [line.split(":")[0] for line in out.splitlines() if line.startswith("epoch ")]
    assert epoch_lines == ["epoch 2.00"]


def test_closed_stdout_ends_quietly_in_process(monkeypatch, capsys):
    class ClosedPipe:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    assert main(["models", "cc-*"]) == EXIT_STDOUT_CLOSED
    assert capsys.readouterr().err == ""


@pytest.mark.slow
def test_closed_stdout_ends_quietly_in_a_real_pipe():
    """`localconv models --json | head`: the reader has gone before the first write (no traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "localconv", "models", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # the only reader: every write of the command now fails with EPIPE
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == EXIT_STDOUT_CLOSED
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_wrong_argument_to_a_command_prints_its_own_usage(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["summary", "--model", "tf-tutorial", "--bogus"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: localconv summary") and "unrecognized arguments: --bogus" in err


def test_summary_of_a_run_folder(tree, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--model", "tf-tutorial-conv", "--data", str(tree), "--out", str(run), "--epochs", "0.1",
                 "--batch-size", "10", "--device", "cpu", "--no-progress", "--limit-test", "4"]) == 0
    capsys.readouterr()
    assert main(["summary", str(run), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["totals"]["params"] == 174_250 - 6 * 6 * 32 * 6 - 6  # a 4-class head (fc 1152 -> 4)
    assert main(["summary", str(run), "--model", "tf-tutorial"]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["summary", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["summary", "tf-tutorial-conv"]) == 2  # a model name where the run folder goes
    assert "for a built-in model give --model tf-tutorial-conv" in capsys.readouterr().err


def test_predict_names_a_file_that_is_not_an_image(tmp_path, capsys):
    notes = tmp_path / "notes.png"
    notes.write_text("not an image\n")
    assert main(["predict", str(tmp_path / "any-run"), str(notes)]) == 2
    err = capsys.readouterr().err
    assert str(notes) in err and "not a readable image" in err and "BytesIO" not in err


def test_train_help_says_what_limit_train_and_lr_do():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    helps = {a.dest: a.help for a in sub.choices["train"]._actions}
    assert "random subset drawn with a fixed seed" in helps["limit_train"]
    assert "fast recipe)" not in helps["lr"] and "either recipe" in helps["lr"]
