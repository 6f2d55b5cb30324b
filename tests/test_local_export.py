"""torch.compile(fullgraph=True), torch.export and both ONNX exporters on the locally connected layers (CPU)."""
from __future__ import annotations

import importlib.util
import io

import pytest
import torch
from torch import nn

from localconv import LocallyConnected1d, LocallyConnected2d

HAS_ORT = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
HAS_ONNXSCRIPT = importlib.util.find_spec("onnxscript") is not None


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(LocallyConnected2d(3, 4, (7, 6), 3, stride=(2, 1), padding=(1, 2, 0, 1), dilation=(1, 2)),
                         nn.ReLU(), LocallyConnected2d(4, 4, (4, 3), 2, groups=2, shared_bias=True))


def test_compile_fullgraph_one_op_per_layer() -> None:
    # No graph break, and the chunk loops stay inside one opaque op per layer; AOT autograd traces
    # the ops' registered gradients (aot_eager: Inductor adds only code generation on top).
    model = _model()
    x = torch.randn(3, 3, 7, 6, requires_grad=True)
    y_ref = model(x)
    g_ref = torch.autograd.grad(y_ref.square().sum(), [x, *model.parameters()])
    graphs = []

    def counting_backend(gm, example_inputs):  # noqa: ANN001, ANN202
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting_backend, fullgraph=True)
    y = compiled(x)
    g = torch.autograd.grad(y.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(g, g_ref):
        torch.testing.assert_close(a, b)
    assert len(graphs) == 1
    ops = [n.target for n in graphs[0].graph.nodes if n.op == "call_function"]
    assert ops.count(torch.ops.localconv.local_conv.default) == 2, ops
    assert len(ops) <= 6, ops  # two ops and a relu, no unrolled chunk loop


def test_torch_export_runs_the_custom_op() -> None:
    model = _model().eval()
    x = torch.randn(2, 3, 7, 6)
    ep = torch.export.export(model, (x,))
    targets = [n.target for n in ep.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.localconv.local_conv.default) == 2, targets
    torch.testing.assert_close(ep.module()(x), model(x))
    buffer = io.BytesIO()
    torch.export.save(ep, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.export.load(buffer).module()(x), model(x))


def test_exported_program_forward_ad_is_exact_or_raises() -> None:
    # torch gives custom ops no jvp rule (a zero tangent, silently): dual tensors are routed through
    # the layer's autograd Function, torch.func.jvp of the raw op raises.
    import torch.autograd.forward_ad as fwAD

    model = _model().double().eval()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    module = torch.export.export(model, (x,)).module()
    tangent = torch.randn_like(x)
    _, want = torch.func.jvp(model, (x,), (tangent,))
    with fwAD.dual_level():
        got = fwAD.unpack_dual(module(fwAD.make_dual(x, tangent))).tangent
    torch.testing.assert_close(got, want)
    with pytest.raises(NotImplementedError, match="raw custom op localconv::local_conv"):
        torch.func.jvp(module, (x,), (tangent,))


def _onnx_check(model: nn.Module, x: torch.Tensor, dynamo: bool, tmp_path) -> None:  # noqa: ANN001
    import onnxruntime as ort

    path = tmp_path / f"model-{dynamo}.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=dynamo, input_names=["x"], output_names=["y"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": x.numpy()})
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_ORT, reason="onnx / onnxruntime not installed (pip install localconv[export])")
@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_matches_onnxruntime(dynamo: bool, tmp_path) -> None:  # noqa: ANN001
    if dynamo and not HAS_ONNXSCRIPT:
        pytest.skip("onnxscript not installed (the dynamo exporter needs it)")
    model = _model().eval()
    _onnx_check(model, torch.randn(2, 3, 7, 6), dynamo, tmp_path)
    torch.manual_seed(1)
    one_d = nn.Sequential(LocallyConnected1d(2, 3, 9, 3, stride=2, padding="valid")).eval()
    _onnx_check(one_d, torch.randn(2, 2, 9), dynamo, tmp_path)
