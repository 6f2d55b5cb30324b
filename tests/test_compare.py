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
    assert lines[0].split()[:5] == ["run", "model", "data", "classes", "seed"]
    assert max(map(len, lines)) <= 100  # readable in a 100-column terminal: the columns come in blocks
    blocks = out.split("\n\n")
    for name in ("conv-a", "conv-b", "fc"):
        assert sum(line.startswith(name + " ") for line in blocks[0].splitlines()) == 1
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
    for name, seed in (("conv-a", 0), ("conv-b", 1), ("fc", 0)):
        line = " ".join(line for line in lines if line.startswith(name + " "))  # its line in every block
        assert re.search(r" 128 .* original +32 +0\.1 ", line), line
        assert re.search(rf"^{name} +tf-tutorial\S* +data +10 +{seed} +val \(32\) +\d+\.\d\d% \+-\d+\.\d "
                         r"+\d+\.\d\d% ", line), line  # data, classes, seed, split and accuracy format


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
    assert re.search(r"val \(32\) +- +- ", text.splitlines()[2]), text


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
    per_class = [line for line in lines[1:] if line.split()[:1] and line.split()[0] in CLASSES]
    assert len(per_class) == len(CLASSES) and all(re.search(r" \d{1,3}\.\d\d%$", line) for line in per_class)
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image)
    assert main(["predict", str(paths[0]), str(image), "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip()
    assert re.fullmatch(r".*x\.png: (\w+ \d{1,3}\.\d\d%, ){2}\w+ \d{1,3}\.\d\d%", out), out


def _edited_copy(source, target, edit):
    shutil.copytree(source, target)
    meta = json.loads((target / "run.json").read_text())
    edit(meta)
    (target / "run.json").write_text(json.dumps(meta))
    return target


def test_seeds_uncertainty_and_close_runs_are_stated(runs, tmp_path, capsys):
    paths, _ = runs
    rows = {r["run"]: r for r in compare_rows(load_runs(paths))}
    for r in rows.values():  # sqrt(p(1-p)/n) on the 32 held-out images
        p = r["final_accuracy"]
        assert r["final_accuracy_uncertainty"] == pytest.approx((p * (1 - p) / 32) ** 0.5)
    # conv-a and conv-b differ only in their seed (--watch/--tensorboard change nothing): one group
    group = rows["conv-a"]["seed_group"]
    assert group is rows["conv-b"]["seed_group"] and "seed_group" not in rows["fc"]
    accs = [rows["conv-a"]["final_accuracy"], rows["conv-b"]["final_accuracy"]]
    assert group["seeds"] == [0, 1] and group["mean_accuracy"] == pytest.approx(sum(accs) / 2)
    assert group["sd_accuracy"] == pytest.approx(abs(accs[0] - accs[1]) / 2 ** 0.5)
    text = format_table(list(rows.values()))
    assert "tf-tutorial-conv, data: 2 seeds (0, 1), final acc mean " in text.replace("\n  ", " ")
    from localconv.reports.compare import notes_below

    # two made-up results on 1,000 images, 1 point apart: within the uncertainty (+-2.2 points)
    a, b = dict(rows["conv-a"]), dict(rows["fc"])
    a.update(final_accuracy=0.50, eval_images=1000, final_accuracy_uncertainty=(0.25 / 1000) ** 0.5)
    b.update(final_accuracy=0.51, eval_images=1000, final_accuracy_uncertainty=(0.51 * 0.49 / 1000) ** 0.5)
    assert any(n.startswith("conv-a and fc: final accuracies differ by 1.0 points, less than the uncertainty of "
                            "the difference (+-2.2)") for n in notes_below([a, b]))
    b.update(final_accuracy=0.60, final_accuracy_uncertainty=(0.6 * 0.4 / 1000) ** 0.5)  # 10 points: clear
    assert not any("differ by" in n for n in notes_below([a, b]))


@pytest.mark.slow
def test_runs_on_other_data_and_model_options_are_flagged(runs, tmp_path, capsys):
    paths, _ = runs

    def other_data(meta):
        meta["data"]["args"]["data"] = "/somewhere/flowers"
        meta["classes"] = meta["classes"][:5]
        meta["model"]["kwargs"].update(num_classes=5, conv2_std=1e-4)

    odd = _edited_copy(paths[0], tmp_path / "flowers-run", other_data)
    capsys.readouterr()
    assert main(["compare", str(paths[0]), str(odd), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("note: these runs differ in their data (conv-a: data (10 classes); flowers-run: "
                          "flowers (5 classes))"), out
    row = next(line for line in out.splitlines() if line.startswith("flowers-run "))
    assert "tf-tutorial-conv (conv2_std=0.0001)" in row and re.search(r" flowers +5 +0 ", row), row
    assert "differ by" not in out  # runs on other data are never paired
    md = (tmp_path / "report" / "report.md").read_text()
    assert "**note: these runs differ in their data" in md

    def other_split(meta):
        meta["data"]["n_val"] = 64

    split = _edited_copy(paths[0], tmp_path / "split-run", other_split)
    assert main(["compare", str(paths[0]), str(split), "--json"]) == 0
    assert "evaluated on different images" in format_table(compare_rows(load_runs([paths[0], split])))


def test_json_alone_writes_no_report(runs, tmp_path, capsys, monkeypatch):
    paths, _ = runs
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    assert main(["compare", *map(str, paths), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["conv-a", "conv-b", "fc"] and rows[0]["seed"] == 0
    assert rows[0]["data"] == "data" and rows[0]["classes"] == 10 and rows[0]["model_options"] == {}
    assert list(tmp_path.iterdir()) == []  # no ./compare/


def test_unfinished_runs_one_channel_models_and_test_splits_are_shown(runs, tmp_path):
    """A run still training (its folder locked) or stopped early is named above the table (its accuracy is its
    last checkpoint's); a --in-chans 1 model is rebuilt with one channel (was: a refusal, exit 2); another
    --test-split of the same folder is other data (other test images)."""
    from localconv.training.run_lock import RunLock

    paths, _ = runs

    def stopped(meta):
        meta.update(complete=False, stop_reason="interrupted", epoch=1.0)

    def one_channel(meta):
        meta["model"]["kwargs"]["in_chans"] = 1

    interrupted = _edited_copy(paths[0], tmp_path / "interrupted", stopped)
    live = _edited_copy(paths[0], tmp_path / "live", lambda meta: None)
    gray = _edited_copy(paths[0], tmp_path / "gray", one_channel)
    with RunLock(live):
        rows = compare_rows(load_runs([paths[0], interrupted, live, gray]))
    text = format_table(rows).replace("\n  ", " ")
    assert ("note: not finished runs (interrupted: stopped (interrupted) at epoch 1 of 2; live: still training at "
            "epoch 2 of 2)") in text, text
    assert [(r["complete"], r["training"]) for r in rows] == [(True, False), (False, False), (True, True),
                                                              (True, False)]
    assert rows[3]["model_options"] == {"in_chans": 1} and 0 < rows[3]["multiply_adds"] < rows[0]["multiply_adds"]
    assert "not finished" not in format_table([rows[0], rows[3]])

    split = _edited_copy(paths[0], tmp_path / "split", lambda meta: meta["data"]["args"].update(test_split=0.3))
    rows = compare_rows(load_runs([paths[0], split]))
    assert rows[1]["data"] == "data test_split=0.3"
    assert format_table(rows).startswith("note: these runs differ in their data")


def test_report_never_replaces_a_users_files(runs, tmp_path, capsys):
    """--out (default ./compare) holding a report.md that compare did not write is refused, untouched; an
    earlier compare report there is rewritten."""
    paths, _ = runs
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    capsys.readouterr()
    assert main(["compare", str(paths[0]), "--out", str(mine)]) == 2
    assert "report.md exists and " in capsys.readouterr().err
    assert (mine / "report.md").read_text() == "my notes\n" and sorted(p.name for p in mine.iterdir()) == [
        "report.md"]
    again = tmp_path / "again"
    for fmt in ("md", "md", "html"):
        assert main(["compare", str(paths[0]), "--out", str(again), "--format", fmt]) == 0
    assert (again / "report.html").is_file() and (again / "report.md").is_file()


def test_a_record_still_being_appended_is_not_an_error(runs, tmp_path):
    """A run in training appends metrics.jsonl as it goes: an unterminated last line is a record being written
    (it was: "not a JSON line", exit 2); a broken line that ends is still refused."""
    from localconv.errors import CheckpointError

    paths, _ = runs
    run = _edited_copy(paths[0], tmp_path / "writing", lambda meta: None)
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"kind": "epoch", "epo')
    (row,) = compare_rows(load_runs([run]))
    assert row["final_cross_entropy"] == compare_rows(load_runs([paths[0]]))[0]["final_cross_entropy"]
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write("\n")
    with pytest.raises(CheckpointError, match="not a JSON line"):
        load_runs([run])
