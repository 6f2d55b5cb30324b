"""`localconv compare` on three small runs trained here (synthetic image-folder data, CPU)."""
import json

import pytest
from PIL import Image

from cifar_fixtures import CLASSES, Arrays, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import main
from localconv.reports.compare import PLOTS, compare_rows, format_table, load_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three runs: two models, one of them twice with another seed (and --watch/--tensorboard on)."""
    tx, ty, sx, sy = synthetic_cifar(n_train=160, n_test=40, seed=2)
    root = tmp_path_factory.mktemp("compare")
    data = write_image_tree(root / "data", Arrays(tx, ty, sx, sy, CLASSES))
    common = ["--data", str(data), "--cache-dir", str(root / "cache"), "--device", "cpu", "--no-progress",
              "--batch-size", "32", "--val-split", "32"]
    specs = [("conv-a", ["--model", "tf-tutorial-conv", "--epochs", "2"]),
             ("conv-b", ["--model", "tf-tutorial-conv", "--epochs", "2", "--seed", "1", "--watch",
                         "--tensorboard", "--tb-every", "2"]),
             ("fc", ["--model", "tf-tutorial", "--epochs", "1"])]
    for name, extra in specs:
        assert main(["train", "--out", str(root / name), *extra, *common]) == 0
    return [root / name for name, _ in specs], root


def test_table_has_one_row_per_run_with_model_facts(runs, tmp_path, capsys):
    paths, _ = runs
    capsys.readouterr()
    assert main(["compare", *map(str, paths), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["run", "model", "params"]
    for name in ("conv-a", "conv-b", "fc"):
        assert sum(line.startswith(name + " ") for line in lines) == 1
    assert "174,250" in out and "1,068,298" in out  # REFERENCE parameter counts
    rows = {r["run"]: r for r in compare_rows(load_runs(paths))}
    assert rows["conv-a"]["epochs"] == 2 and rows["fc"]["epochs"] == 1
    assert rows["fc"]["bytes_fp32_with_ema"] == 2 * rows["fc"]["bytes_fp32"]
    assert rows["fc"]["multiply_adds"] > 1e7 and rows["conv-a"]["multiply_adds"] > 1e7
    for r in rows.values():
        assert 0 <= r["final_accuracy"] <= r["best_accuracy"] <= 1 and r["train_time_s"] > 0
        assert r["images_per_s"] > 0 and r["eval_split"] == "val"


def test_report_and_plots_are_valid(runs, tmp_path):
    paths, _ = runs
    out = tmp_path / "report"
    assert main(["compare", *map(str, paths), "--out", str(out), "--format", "html", "--title", "three runs"]) == 0
    html = (out / "report.html").read_text()
    assert "<table>" in html and "three runs" in html and html.count("<tr>") == 4
    for png in PLOTS.values():
        assert f'src="{png}"' in html
        with Image.open(out / png) as image:
            image.verify()
        with Image.open(out / png) as image:
            assert image.format == "PNG" and image.size[0] >= 500 and image.size[1] >= 300
    assert len(json.loads((out / "compare.json").read_text())) == 3
    assert main(["compare", *map(str, paths), "--out", str(out), "--format", "md"]) == 0
    md = (out / "report.md").read_text()
    assert md.count("\n| ") == 4 and f"]({PLOTS['epoch']})" in md


def test_watch_and_tensorboard_options_of_train(runs):
    paths, _ = runs
    assert list(paths[1].glob("events.out.tfevents.*")), "--tensorboard writes into the run folder"
    assert not list(paths[0].glob("events.out.tfevents.*"))


def test_bad_input_exits_2(runs, tmp_path, capsys):
    paths, _ = runs
    assert main(["compare", str(paths[0]), str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and len(err.strip().splitlines()) == 1


def test_format_table_handles_missing_accuracy(runs):
    paths, _ = runs
    rows = compare_rows(load_runs(paths[:1]))
    rows[0].update(best_accuracy=None, final_accuracy=None, images_per_s=None, train_time_s=None)
    text = format_table(rows)
    assert text.splitlines()[2].rstrip().endswith("-")
