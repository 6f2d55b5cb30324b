"""``localconv summary`` and reports.summary: shapes, parameters, multiply-adds, totals."""
from __future__ import annotations

import json

import pytest

from localconv import create_model
from localconv.cli.main import main
from localconv.models.cfg_models import shipped_cfg_text
from localconv.reports.summary import format_summary, summarize

# TF tutorial by hand: conv1 24*24 positions x (5*5*3*64) weights, conv2 12*12 x (5*5*64*64),
# local3 2304*384, local4 384*192, softmax_linear 192*10, plus the two LRN windows (9 per output).
TF_WEIGHT_MACS = 24 * 24 * 5 * 5 * 3 * 64 + 12 * 12 * 5 * 5 * 64 * 64 + 2304 * 384 + 384 * 192 + 192 * 10
TF_LRN_MACS = 2 * (64 * 12 * 12 * 9)


def test_tf_tutorial_totals() -> None:
    s = summarize(create_model("tf-tutorial"))
    assert s.input_shape == [3, 24, 24]
    assert s.totals.params == 1_068_298
    assert s.totals.multiply_adds == TF_WEIGHT_MACS + TF_LRN_MACS == 18_636_672
    # REFERENCE quotes "about 19.5M": ours (weights + LRN windows) is 4.4% lower
    assert abs(s.totals.multiply_adds - 19.5e6) / 19.5e6 < 0.06
    assert s.totals.bytes_fp32 == 4 * 1_068_298
    assert s.totals.bytes_fp32_with_ema == 8 * 1_068_298  # ~8.5 MB, the TF checkpoint size
    rows = {r.name: r for r in s.layers}
    assert rows["conv1"].output_shape == [64, 24, 24] and rows["conv1"].multiply_adds == 24 * 24 * 4800
    assert rows["pool2"].output_shape == [64, 6, 6] and rows["softmax_linear"].output_shape == [10]
    assert [r.name for r in s.layers].count("relu") == 4  # the shared ReLU, one row per call
    assert sum(r.params for r in s.layers) == 1_068_298  # counted once each


def test_cc11pct_rows() -> None:
    s = summarize(create_model("cc-11pct"))
    rows = {r.name: r for r in s.layers}
    assert [r.name for r in s.layers] == ["conv1", "pool1", "rnorm1", "conv2", "rnorm2", "pool2", "local3",
                                          "local4", "fc10"]
    assert rows["local3"].type == "local" and rows["local3"].output_shape == [64, 6, 6]
    assert rows["local3"].multiply_adds == 1_327_104 and rows["local3"].params == 1_327_104 + 2_304
    assert rows["pool1"].output_shape == [64, 12, 12] and rows["pool1"].multiply_adds == 0
    assert rows["rnorm1"].multiply_adds == 64 * 12 * 12 * 9
    assert s.totals.params == 2_112_970
    text = format_summary(s)
    assert "local3" in text and "2,112,970 parameters" in text and "with an EMA copy: 16.90 MB" in text


def test_cli_summary_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "--model", "cc-80sec", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["input_shape"] == [3, 32, 32] and data["totals"]["params"] == 145_578
    assert [row["name"] for row in data["layers"]][-2:] == ["fc64", "fc10"]


def test_cli_summary_cfg_without_params(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    layers, _ = shipped_cfg_text("cc-11pct")
    (tmp_path / "layers.cfg").write_text(layers)
    assert main(["summary", "--cfg", str(tmp_path / "layers.cfg"), "--crop", "24"]) == 0
    out = capsys.readouterr().out
    assert "local4" in out and "2,112,970 parameters" in out


def test_cli_summary_bad_cfg_is_one_line_exit_2(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: ANN001
    (tmp_path / "layers.cfg").write_text("[data]\ntype=data\ndataIdx=0\n[conv1]\ntype=convolution\n")
    assert main(["summary", "--cfg", str(tmp_path / "layers.cfg")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.endswith(f"{tmp_path / 'layers.cfg'}:5: [conv1] unknown layer type 'convolution'; known: data, conv, "
                        "local, fc, pool, cmrnorm, rnorm, cnorm, neuron, softmax, eltsum, eltmax, cost.logreg")
