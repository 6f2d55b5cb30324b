"""`localconv compare` on three small runs trained here (synthetic image-folder data, CPU)."""
import base64
import io
import json
import re
import shutil

import pytest
from PIL import Image

from cifar_fixtures import CLASSES, Arrays, write_image_tree
from conftest import synthetic_cifar
from localconv.cli.main import main
from localconv.reports.compare import PLOTS, compare_rows, curves, format_table, load_runs


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
        # what each run was trained on and how: 160 images, 32 held out
        assert (r["train_images"], r["eval_images"], r["recipe"], r["batch_size"]) == (128, 32, "original", 32)
        assert r["lr"] == pytest.approx(0.1)  # the TF tutorial's rate (no decay within 2 epochs)
    # the weight-decay terms of the fully connected top are in the total, not in the cross-entropy
    assert rows["fc"]["final_total_loss"] > rows["fc"]["final_cross_entropy"] + 0.5
    for name in ("conv-a", "conv-b", "fc"):
        line = next(line for line in lines if line.startswith(name + " "))
        assert re.search(r" 128 +original +32 +0\.1 ", line), line
        assert re.search(r" val \(32\) +\d+\.\d\d% +\d+\.\d\d%$", line), line  # split and accuracy format


def test_report_and_plots_are_valid(runs, tmp_path):
    paths, _ = runs
    out = tmp_path / "report"
    assert main(["compare", *map(str, paths), "--out", str(out), "--format", "html", "--title", "three runs"]) == 0
    html = (out / "report.html").read_text()
    assert "<table>" in html and "three runs" in html and html.count("<tr>") == 4
    assert "val (32)" in html and "eval split" in html
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(PLOTS) and 'src="' + PLOTS["epoch"] not in html  # one self-contained file
    for data in embedded:
        with Image.open(io.BytesIO(base64.b64decode(data))) as image:
            assert image.format == "PNG"
    for png in PLOTS.values():
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


def test_curves_use_step_points_and_name_the_split(runs):
    paths, _ = runs
    by_epoch = {c.label: c for c in curves(load_runs(paths), "epoch")}
    conv = by_epoch["conv-a"]  # 4 steps per epoch, 2 epochs: a short run logs every step
    assert conv.loss_x == pytest.approx([k / 4 for k in range(1, 9)]) and len(conv.total) == 8
    assert all(t > ce for t, ce in zip(conv.total, conv.loss))
    assert conv.acc_x == [1.0, 2.0] and conv.acc_label == "conv-a (val, 32 images)"
    by_time = {c.label: c for c in curves(load_runs(paths), "time")}
    assert len(by_time["conv-a"].loss_x) == 8 and by_time["conv-a"].loss_x == sorted(by_time["conv-a"].loss_x)


def test_reads_metrics_written_before_the_two_loss_names(runs, tmp_path, capsys):
    paths, _ = runs
    old = tmp_path / "old-run"
    shutil.copytree(paths[0], old)
    records = [json.loads(line) for line in (old / "metrics.jsonl").read_text().splitlines()]
    for r in records:  # the old format: "loss" held the total, no cross-entropy
        r["loss"] = r.pop("loss/total")
        del r["loss/cross_entropy"]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    run = load_runs([old])
    (curve,) = curves(run, "epoch")
    assert curve.loss == [] and curve.total == [r["loss"] for r in records if r["kind"] == "step"]
    row = compare_rows(run)[0]
    assert row["final_total_loss"] == records[-1]["loss"] and row["final_cross_entropy"] is None
    assert main(["compare", str(old), "--out", str(tmp_path / "report")]) == 0
    assert "old-run" in capsys.readouterr().out


def test_eval_and_predict_print_percentages(runs, tmp_path, capsys):
    paths, root = runs
    capsys.readouterr()
    assert main(["eval", str(paths[0]), "--data", str(root / "data"), "--cache-dir", str(root / "cache"),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.search(r"test precision@1 = \d{1,3}\.\d\d% on 40 images", lines[0]), lines[0]
    per_class = [line for line in lines[1:] if line.startswith("  ")]
    assert len(per_class) == len(CLASSES) and all(re.search(r" \d{1,3}\.\d\d%$", line) for line in per_class)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert main(["predict", str(paths[0]), str(image), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r".*x\.png: (\w+ \d{1,3}\.\d\d%, ){2}\w+ \d{1,3}\.\d\d%", out), out
