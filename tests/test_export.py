"""Issue 24: `localconv export RUN --format onnx|exported-program` writes the whole classifier (uint8 images in,
preprocessing in the graph) with a side-car JSON, checked against the eager model at export time, with a
dynamic batch dimension; `localconv predict FILE.onnx` runs it with onnxruntime and without torch."""
from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import localconv
from localconv.cli.main import main
from run_fixtures import private_cache, image_tree, train_run  # noqa: F401 (private_cache: autouse)

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime", "onnxscript"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx/onnxruntime/onnxscript not installed (localconv[export])")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = image_tree(root / "data")
    return {"tf": train_run(data, root / "tf"), "cc": train_run(data, root / "cc", model="cc-80sec"), "data": data}


def raw_images(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


@pytest.mark.slow
@needs_onnx
def test_onnx_export_matches_eager_and_predicts_without_torch(runs, tmp_path, capsys):
    import onnx
    import onnxruntime as ort

    out = tmp_path / "deploy" / "tf.onnx"
    out.parent.mkdir()
    assert main(["export", str(runs["tf"]), "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    meta = json.loads(out.with_name("tf.onnx.json").read_text())
    assert result["file"] == str(out) and result["max_abs_diff"] <= 1e-4 and meta["check"]["batch_sizes"] == [2, 5]
    assert meta["input"] == {**meta["input"], "name": "images", "dtype": "uint8", "layout": "NCHW",
                             "shape": ["batch", 3, 32, 32]}
    assert meta["preprocessing_in_graph"]["crop"] == 24
    assert meta["preprocessing_in_graph"]["normalization"] == "per-image standardization"
    model, run_meta = localconv.load_run(runs["tf"])
    assert meta["classes"] == run_meta["classes"] and meta["source"]["sha256"] == run_meta["sha256"]["ema"]
    stored = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(stored["localconv"])["classes"] == run_meta["classes"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # the batch dimension is dynamic
        images = raw_images(n, seed=n)
        logits, probs = session.run(["logits", "probabilities"], {"images": images.numpy()})
        with torch.no_grad():
            want_logits = model(model.preprocess(images))
        np.testing.assert_allclose(logits, want_logits.numpy(), atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(probs, model.predict_proba(images).numpy(), atol=1e-5)
    # predict with the ONNX file in a process where torch cannot be imported
    paths = []
    for i, image in enumerate(raw_images(2, seed=3)):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(paths[-1])
    blocked = ("import sys; sys.modules['torch'] = None; from localconv.cli.main import main; "
               "sys.exit(main(sys.argv[1:]))")
    args = ["predict", str(out), *map(str, paths), "--json", "--top-k", "10", "--views", "flip"]
    done = subprocess.run([sys.executable, "-c", blocked, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    from_onnx = json.loads(done.stdout)
    assert main(["predict", str(runs["tf"]), *map(str, paths), "--json", "--top-k", "10", "--views", "flip"]) == 0
    from_run = json.loads(capsys.readouterr().out)
    for a, b in zip(from_onnx, from_run):
        got = {t["class"]: t["probability"] for t in a["top"]}
        want = {t["class"]: t["probability"] for t in b["top"]}
        assert got.keys() == want.keys() and all(abs(got[c] - want[c]) < 1e-5 for c in got)
    capsys.readouterr()
    assert main(["predict", str(out), str(paths[0]), "--views", "multiview"]) == 2
    assert "multiview needs the run folder" in capsys.readouterr().err


@pytest.mark.slow
def test_exported_program_with_a_pixel_mean_model(runs, tmp_path, capsys):
    """A cfg network (per-pixel mean subtraction, cuda-convnet pooling), its raw weights, as a torch.export
    program: the file's outputs equal the eager model's at any batch size."""
    out = tmp_path / "cc.pt2"
    assert main(["export", str(runs["cc"]), "--format", "exported-program", "--weights", "raw",
                 "--out", str(out)]) == 0
    meta = json.loads((tmp_path / "cc.pt2.json").read_text())
    assert meta["preprocessing_in_graph"]["normalization"] == "per-pixel mean subtraction"
    assert meta["preprocessing_in_graph"]["crop"] == 32 and meta["source"]["weights"] == "raw"
    extra = {"localconv.json": ""}
    program = torch.export.load(io.BytesIO(out.read_bytes()), extra_files=extra)
    assert json.loads(extra["localconv.json"])["architecture"] == "cc-80sec"
    model, _ = localconv.load_run(runs["cc"], which="raw")
    for n in (1, 6):
        images = raw_images(n, seed=10 + n)
        logits, probs = program.module()(images)
        with torch.no_grad():
            torch.testing.assert_close(logits, model(model.preprocess(images)), atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(probs, model.predict_proba(images), atol=1e-6, rtol=1e-5)


@pytest.mark.slow
@needs_onnx
def test_avg_pool_onnx_matches_eager_and_eager_keeps_the_exact_sum(tmp_path):
    """cuda-convnet average pooling with clipped border windows (divisor: the in-bounds count): ONNX has no
    divisor_override, so the ONNX export takes mean * size**2; the file matches eager, and eager is unchanged."""
    import onnxruntime as ort

    from localconv.nn.pool import ConvNetPool

    pool = ConvNetPool("avg", 3, 2, 9, start=-1).eval()  # windows clipped at both borders: counts 4, 6 and 9
    x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(0))
    exact = torch.nn.functional.avg_pool2d(torch.nn.functional.pad(x, (1, 1, 1, 1)), 3, 2, divisor_override=1)
    assert torch.equal(pool(x), exact / pool.count)  # eager: bit for bit the divisor_override formulation
    path = tmp_path / "pool.onnx"
    torch.onnx.export(pool, (x,), dynamo=True, input_names=["x"], verbose=False).save(str(path))
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, pool(x).numpy(), atol=1e-6, rtol=1e-6)
    assert not torch.equal(pool.count, torch.full_like(pool.count, 9.0))  # the test covers clipped windows


@pytest.mark.slow
@needs_onnx
@pytest.mark.parametrize("kind", ["rnorm", "cnorm"])
def test_response_norm_onnx_matches_eager(kind, tmp_path):
    """cc-18pct's rnorm (and cnorm) sum squares with the same divisor_override=1 pooling: their ONNX export
    differed from eager by up to ~4.8 on unit-scale inputs before the export-only formulation."""
    import onnxruntime as ort

    from localconv.nn.norm import ContrastNorm, ResponseNorm

    norm = (ResponseNorm(3, 0.5, 0.75) if kind == "rnorm" else ContrastNorm(4, 0.5, 0.75)).eval()
    x = 3 * torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "norm.onnx"
    torch.onnx.export(norm, (x,), dynamo=True, input_names=["x"], verbose=False).save(str(path))
    (got,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, norm(x).numpy(), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@needs_onnx
def test_onnx_export_of_an_avg_pool_cfg_model(runs, tmp_path, capsys):
    """cc-80sec (pool=avg) exports to ONNX, passes the export-time check, and matches eager at other batches."""
    import onnxruntime as ort

    out = tmp_path / "cc.onnx"
    assert main(["export", str(runs["cc"]), "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["max_abs_diff"] <= 1e-4
    model, _ = localconv.load_run(runs["cc"])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 6):
        images = raw_images(n, seed=20 + n)
        logits, probs = session.run(["logits", "probabilities"], {"images": images.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, model(model.preprocess(images)).numpy(), atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(probs, model.predict_proba(images).numpy(), atol=1e-6)


def test_export_refusals_leave_nothing(runs, tmp_path, capsys, monkeypatch):
    import localconv.export.exporter as exporter

    run = str(runs["cc"])
    for args, message in (([run, "--out", str(tmp_path / "m.onnx"), "--format", "exported-program"], "*.pt2"),
                          ([run, "--out", str(tmp_path / "no" / "m.pt2"), "--format", "exported-program"],
                           "not an existing folder"),
                          ([str(tmp_path / "missing")], "does not exist")):
        assert main(["export", *args]) == 2, args
        assert message in capsys.readouterr().err
    users = tmp_path / "notes.pt2"
    users.write_text("a user's file")
    assert main(["export", run, "--format", "exported-program", "--out", str(users)]) == 2
    assert "not an export of localconv" in capsys.readouterr().err and users.read_text() == "a user's file"
    users.unlink()
    # a file that does not reproduce the eager model is refused (exit 1) and not kept
    monkeypatch.setattr(exporter, "CHECK_ATOL", -1.0)
    out = tmp_path / "bad.pt2"
    assert main(["export", run, "--format", "exported-program", "--out", str(out)]) == 1
    assert "differs from the eager model" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_export_never_replaces_a_users_file_named_as_the_side_car(runs, tmp_path, capsys):
    """`--out s.onnx` beside the user's own s.onnx.json overwrote that file with export metadata (exit 0); a
    folder or a FIFO of that name must be named, not written into or read forever."""
    import os

    run = str(runs["tf"])
    notes = tmp_path / "s.onnx.json"
    notes.write_text('{"my": "notes"}')
    assert main(["export", run, "--out", str(tmp_path / "s.onnx")]) == 2
    assert "s.onnx.json exists and is not localconv export metadata" in capsys.readouterr().err
    assert notes.read_text() == '{"my": "notes"}'
    (tmp_path / "d.onnx.json").mkdir()
    assert main(["export", run, "--out", str(tmp_path / "d.onnx")]) == 2
    assert "d.onnx.json is a folder" in capsys.readouterr().err
    os.mkfifo(tmp_path / "f.onnx.json")
    assert main(["export", run, "--out", str(tmp_path / "f.onnx")]) == 2
    assert "f.onnx.json exists and is not localconv export metadata" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx.json", "f.onnx.json", "s.onnx.json"]


@pytest.mark.slow
def test_export_writes_its_file_and_side_car_under_a_folder_lock(runs, tmp_path, monkeypatch):
    """Two exports to one --out renamed their side-cars and files interleaved, leaving one run's file beside the
    other run's side-car (other classes); each export now renames both while it holds a lock on the folder."""
    import fcntl
    import os

    import localconv.export.exporter as exporter

    real, seen = exporter.atomic_write, []

    def checked_write(path, write):  # noqa: ANN001, ANN202
        fd = os.open(tmp_path, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):  # another process's export would wait here
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(path)
        real(path, write)

    monkeypatch.setattr(exporter, "atomic_write", checked_write)
    assert main(["export", str(runs["tf"]), "--format", "exported-program", "--out", str(tmp_path / "m.pt2")]) == 0
    assert seen == [tmp_path / "m.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt2", "m.pt2.json"]


@pytest.mark.slow
@needs_onnx
def test_predict_refuses_a_side_car_of_another_export_and_a_changed_file(runs, tmp_path, capsys):
    """A side-car with other classes gave wrong class names with exit 0, one with fewer classes or another
    input shape a traceback, and a changed byte in the file went unnoticed: each is one line, exit 2."""
    import shutil

    out = tmp_path / "m.onnx"
    assert main(["export", str(runs["tf"]), "--out", str(out)]) == 0
    image = tmp_path / "img.png"
    Image.fromarray(raw_images(1, seed=7)[0].permute(1, 2, 0).numpy()).save(image)
    capsys.readouterr()
    assert main(["predict", str(out), str(image)]) == 0
    good = json.loads(out.with_name("m.onnx.json").read_text())
    assert main(["predict", str(out), str(image), "--weights", "raw"]) == 2  # was ignored: the file holds ema
    assert "holds the ema weights" in capsys.readouterr().err

    def variant(name: str, change, data: bytes | None = None) -> str:  # noqa: ANN001
        record = json.loads(json.dumps(good))
        change(record)
        (tmp_path / f"{name}.onnx").write_bytes(data if data is not None else out.read_bytes())
        (tmp_path / f"{name}.onnx.json").write_text(json.dumps(record))
        capsys.readouterr()
        assert main(["predict", str(tmp_path / f"{name}.onnx"), str(image)]) == 2, name
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        return err

    assert "field 'classes' differs" in variant("renamed", lambda r: r["classes"].reverse())
    assert "field 'classes' differs" in variant("fewer", lambda r: r.update(classes=["a", "b", "c"]))
    assert "field 'input' differs" in variant("gray", lambda r: r["input"].update(shape=["batch", 1, 32, 32]))
    assert "field 'input' differs" in variant("old", lambda r: (r.pop("file_sha256"),
                                                                r["input"].update(shape=["batch", 3, 28, 28])))
    flipped = bytearray(out.read_bytes())
    flipped[len(flipped) // 2] ^= 0xFF
    assert "checksum mismatch" in variant("flipped", lambda r: None, bytes(flipped))
    shutil.copy(out, tmp_path / "alone.onnx")
    assert main(["predict", str(tmp_path / "alone.onnx"), str(image)]) == 2
    assert "alone.onnx.json: missing" in capsys.readouterr().err


def readme_deploy_commands() -> list[list[str]]:
    """The `localconv` lines of the README's "Deploy and fine-tune" block, comments removed."""
    import re
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = text.index("### Deploy and fine-tune")
    block = re.search(r"```bash\n(.*?)```", text[start:], flags=re.S).group(1)
    return [shlex.split(line.split("#")[0])[1:] for line in block.splitlines() if line.startswith("localconv ")]


@pytest.mark.slow
@needs_onnx
def test_readme_deploy_commands_run(tmp_path, monkeypatch, capsys):
    """Each command of the README's deploy section, as written, on small data (DATA, MY_DATA) with a short
    CPU training (the only options added)."""
    commands = readme_deploy_commands()
    assert [c[0] for c in commands] == ["train", "eval", "export", "predict", "train"]
    monkeypatch.chdir(tmp_path)
    places = {"DATA": str(image_tree(tmp_path / "data")),
              "MY_DATA": str(image_tree(tmp_path / "mine", classes=["cat", "dog", "fox"], seed=4))}
    Image.fromarray(raw_images(1, seed=5)[0].permute(1, 2, 0).numpy()).save(tmp_path / "cat.png")
    for command in commands:
        argv = [places.get(arg, arg) for arg in command]
        if argv[0] == "train":
            argv += ["--epochs", "1", "--batch-size", "20", "--device", "cpu", "--no-progress"]
        assert main(argv) == 0, argv
    out = capsys.readouterr().out
    assert "runs/tf1: test precision@1" in out and "cat.png: " in out
    assert (tmp_path / "tf1.onnx.json").is_file()
    meta = json.loads((tmp_path / "runs" / "mine" / "run.json").read_text())
    assert meta["classes"] == ["cat", "dog", "fox"] and meta["init_from"]["head"] == "re-made"
