"""The cfg builder: shapes, parameter counts, learning groups, the cc-* models, every error case."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load, save

from localconv import create_model
from localconv.configs import CfgNet, build_cfg_model, build_cfg_model_from_spec, load_cfg_model
from localconv.errors import ConfigError, ModelError
from localconv.models.cfg_models import SCHEDULES, shipped_cfg_text
from localconv.nn import LocallyConnected2d
from localconv.training.optim import ConvNetSGD

LAYERS = """\
# a small network
[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[conv1]
type=conv
inputs=data
channels=3
filters=16
filterSize=5
padding=2
stride=2
initW=0.01
neuron=relu

[pool1]
type=pool
inputs=conv1
pool=max
sizeX=3
stride=2

[rnorm1]
type=cmrnorm
inputs=pool1
size=5

[fc10]
type=fc
inputs=rnorm1
outputs=10

[probs]
type=softmax
inputs=fc10

[logprob]
type=cost.logreg
inputs=labels,probs
"""

PARAMS = """\
[conv1]
epsW=0.001
epsB=0.002
momW=0.9
momB=0.8
wc=0.004

[fc10]
epsW=0.01
epsB=0.02
momW=0.5
momB=0.6
wc=0.1

[rnorm1]
scale=0.001
pow=0.75

[logprob]
coeff=2
"""


def line_of(text: str, section: str, key: str | None = None) -> int:
    """1-based line of ``[section]`` or of ``key=`` inside it."""
    lines = text.split("\n")
    start = lines.index(f"[{section}]")
    if key is None:
        return start + 1
    for i in range(start + 1, len(lines)):
        if lines[i].startswith("["):
            break
        if lines[i].split("=")[0].strip() == key:
            return i + 1
    raise AssertionError(f"{key} not in [{section}]")


def edit(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def build(layers: str = LAYERS, params: str | None = PARAMS, **kw) -> CfgNet:  # noqa: ANN003
    return build_cfg_model(layers, params, "layers.cfg", "params.cfg", **kw)


def expect_error(prefix: str, fragment: str, layers: str = LAYERS, params: str | None = PARAMS,
                 **kw) -> None:  # noqa: ANN003
    with pytest.raises(ConfigError) as info:
        build(layers, params, **kw)
    message = str(info.value)
    assert message.startswith(prefix + " "), message
    assert fragment in message, message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------
# a small network

def test_small_network_shapes_forward_and_learning() -> None:
    model = build()
    assert isinstance(model, CfgNet)
    assert model.conv1.output_size == 13  # 1 + ceil((4 + 24 - 5) / 2): the last window hangs over
    assert model.pool1.outputs == 6  # ceil((13 - 3) / 2) + 1
    assert tuple(model.fc10.weight.shape) == (10, 16 * 6 * 6)
    assert model.loss_coeff == 2.0
    assert model.layer_types["rnorm1"] == "cmrnorm" and model.logits_layer == "fc10"
    x = torch.randn(3, 3, 24, 24)
    logits = model(x)
    by_hand = model.fc10(model.rnorm1(model.pool1(model.conv1(x))))  # the softmax's input
    torch.testing.assert_close(logits, by_hand)
    groups = {g.name: (g.lr, g.momentum, g.wc) for g in model.param_groups()}
    assert groups == {"conv1.weight": (0.001, 0.9, 0.004), "conv1.bias": (0.002, 0.8, 0.0),
                      "fc10.weight": (0.01, 0.5, 0.1), "fc10.bias": (0.02, 0.6, 0.0)}
    grouped = [p for g in model.param_groups() for p in g.params]
    assert len(grouped) == len(list(model.parameters()))
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters()}


def test_input_spec_and_pixel_mean_buffer() -> None:
    model = build()
    assert model.input_spec.crop == 24 and model.input_spec.normalize == "pixel_mean"
    assert model.input_spec.flip is True and model.input_spec.photometric is False
    assert tuple(model.state_dict()["pixel_mean"].shape) == (3, 32, 32)
    assert model.needs_pixel_mean()
    model.set_pixel_mean(torch.full((3, 32, 32), 120.0))
    assert model.pixel_mean.mean().item() == 120.0
    assert build(crop=32).input_spec.flip is False
    assert build(crop=32, flip=True).input_spec.flip is True
    assert build(crop=32).conv1.output_size == 17


def test_spec_rebuilds_the_same_model() -> None:
    model = build()
    clone = build_cfg_model_from_spec(model.cfg_spec)
    clone.load_state_dict(load(save(model.state_dict())))
    x = torch.randn(2, 3, 24, 24)
    torch.testing.assert_close(clone(x), model(x))
    assert model.cfg_spec["layers_name"] == "layers.cfg" and model.cfg_spec["crop"] == 24
    with pytest.raises(ModelError):
        build_cfg_model_from_spec({"layers": "x"})


# ---------------------------------------------------------------------------------------------
# less common features: several inputs, groups, random sparsity, eltwise, neuron layers, old keys

FEATURES = """\
[data]
type=data
dataIdx=0
[labels]
type=data
dataIdx=1
[convA]
type=conv
inputs=data
channels=3
filters=8
filterSize=3
padding=1
sharedBiases=false
[convB]
type=conv
inputs=data,convA
channels=3,8
filters=8,4
groups=1,2
filterSize=5,3
padding=2,1
initW=0.001,0.01
partialSum=4
[sparse]
type=local
inputs=convB
channels=8
filters=4
groups=4
randSparse=true
filterChannels=4
filterSize=3
stride=2
[sum]
type=eltsum
inputs=sparse,sparse
coeffs=0.5,1.5
[norm]
type=rnorm
inputs=sum
channels=16
sizeX=3
scale=0.01
pow=0.75
[cn]
type=cnorm
inputs=norm
size=2
[mx]
type=eltmax
inputs=cn,norm
neuron=brelu[6]
[act]
type=neuron
inputs=mx
neuron=tanh[1.7,0.66]
[fc]
type=fc
inputs=act,convA
outputs=64
initW=0.01,0.02
[tocube]
type=conv
inputs=fc
channels=16
filters=4
filterSize=1
[fc10]
type=fc
inputs=tocube
outputs=10
[probs]
type=softmax
inputs=fc10
[cost]
type=cost.logreg
inputs=labels,probs
"""

FEATURE_PARAMS = """\
[convA]
epsW=0.1
epsB=0.1
momW=0
momB=0
wc=0
[convB]
epsW=0.1,0.2
epsB=0.1
momW=0.9
momB=0.9
wc=0.004,0.001
[sparse]
epsW=0.1
epsB=0.1
momW=0.9
momB=0.9
wc=0
[cn]
scale=0.1
pow=0.5
[fc]
epsW=0.1
epsB=0.1
momW=0.9
momB=0.9
wc=0
[tocube]
epsW=0.1
epsB=0.1
momW=0.9
momB=0.9
wc=0
[fc10]
epsW=0.1
epsB=0.1
momW=0.9
momB=0.9
wc=0
"""


def test_less_common_features_build_and_run() -> None:
    torch.manual_seed(0)
    model = build(FEATURES, FEATURE_PARAMS)
    assert tuple(model.convA.bias.shape) == (8, 24, 24)  # sharedBiases=false: untied
    assert [n for n, _ in model.convB.named_parameters()] == ["weight", "weight_1", "bias"]
    assert tuple(model.convB.weight_1.shape) == (8, 4, 3, 3)  # 2 groups of 4 filters, 4 maps each
    assert isinstance(model.sparse, LocallyConnected2d)
    assert model.sparse.out_size == 12 and tuple(model.sparse.weight.shape) == (12, 12, 16, 4, 3, 3)
    assert "sparse.conns" in model.state_dict()  # the random wiring is saved
    assert model.norm.size == 3 and model.norm.scale == 0.01  # old-style sizeX/scale/pow in the layer file
    assert tuple(model.fc.weight_1.shape) == (64, 8 * 24 * 24)
    assert model.plan[-2].views == ((16, 2, 2),)  # the fc's 64 values read as 16 maps of 2x2
    groups = {g.name: (g.lr, g.wc) for g in model.param_groups()}
    assert groups["convB.weight"] == (0.1, 0.004) and groups["convB.weight_1"] == (0.2, 0.001)
    x = torch.randn(2, 3, 24, 24)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    # the wiring survives a rebuild + state_dict load
    clone = build_cfg_model_from_spec(model.cfg_spec)
    clone.load_state_dict(model.state_dict())
    assert torch.equal(clone.sparse.conns, model.sparse.conns)
    torch.testing.assert_close(clone(x), model(x))


# ---------------------------------------------------------------------------------------------
# the shipped cc-* models

def _count_conv(c_in: int, c_out: int, k: int) -> int:
    return c_in * k * k * c_out + c_out


def _count_local(c_in: int, c_out: int, k: int, out: int) -> int:
    return out * out * c_out * c_in * k * k + c_out * out * out


def test_cc11pct_parameter_count_and_layers() -> None:
    model = create_model("cc-11pct")
    assert sum(p.numel() for p in model.parameters()) == 2_112_970
    counts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    assert counts["conv1"] == 4_864 and counts["conv2"] == 102_464
    assert model.local3.weight.numel() == 1_327_104 and model.local3.bias.numel() == 2_304
    assert model.local4.weight.numel() == 663_552 and model.local4.bias.numel() == 1_152
    assert counts["fc10"] == 11_530
    assert model.default_schedule == "350:1,150:1,10:0.1,10:0.01"
    wc = {g.name: g.wc for g in model.param_groups()}
    assert wc["conv1.weight"] == 0 and wc["local3.weight"] == 0.004 and wc["fc10.weight"] == 0.01
    assert all(g.lr == 0.001 and g.momentum == 0.9 for g in model.param_groups() if g.name.endswith("weight"))
    assert all(g.lr == 0.002 and g.wc == 0 for g in model.param_groups() if g.name.endswith("bias"))
    assert model.rnorm1.size == 9 and model.rnorm1.scale == 0.001 and model.rnorm1.power == 0.75


@pytest.mark.parametrize("name,expected", [
    ("cc-13pct", _count_conv(3, 64, 5) + _count_conv(64, 64, 5) + _count_local(64, 32, 3, 6)
     + _count_local(32, 32, 3, 6) + (32 * 6 * 6 * 10 + 10)),
    ("cc-18pct", _count_conv(3, 32, 5) + _count_conv(32, 32, 5) + _count_conv(32, 64, 5) + (64 * 4 * 4 * 10 + 10)),
    ("cc-80sec", _count_conv(3, 32, 5) + _count_conv(32, 32, 5) + _count_conv(32, 64, 5) + (64 * 4 * 4 * 64 + 64)
     + (64 * 10 + 10)),
])
def test_sister_network_parameter_counts(name: str, expected: int) -> None:
    model = create_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.default_schedule == SCHEDULES[name]


def test_cc_input_specs_and_crop_option() -> None:
    assert create_model("cc-18pct").input_spec.crop == 32 and create_model("cc-18pct").input_spec.flip is False
    assert create_model("cc-80sec").input_spec.flip is False
    assert create_model("cc-13pct").input_spec.crop == 24 and create_model("cc-13pct").input_spec.flip is True
    big = create_model("cc-11pct", crop=32)
    assert big.local3.out_size == 8 and big(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ModelError):
        create_model("cc-11pct", crop=40)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cc-11pct", "cc-13pct", "cc-18pct", "cc-80sec"])
def test_cc_models_train_on_a_fixed_batch(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name)
    side = model.input_spec.crop
    x = torch.randn(16, 3, side, side) * 60  # like mean-subtracted 0..255 pixels
    y = torch.randint(0, 10, (16,))
    groups = [{"params": g.params, "lr": g.lr * 10, "momentum": g.momentum, "wc": g.wc, "name": g.name}
              for g in model.param_groups()]
    opt = ConvNetSGD(groups)
    losses = []
    for _ in range(6):
        loss = model.loss_coeff * torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.01, losses


def test_load_cfg_model_from_files(tmp_path) -> None:  # noqa: ANN001
    layers, params = shipped_cfg_text("cc-80sec")
    (tmp_path / "layers.cfg").write_text(layers)
    (tmp_path / "params.cfg").write_text(params)
    model = load_cfg_model(tmp_path / "layers.cfg", tmp_path / "params.cfg", crop=32)
    assert sum(p.numel() for p in model.parameters()) == 145_578
    assert model.cfg_spec["layers_name"] == str(tmp_path / "layers.cfg")
    with pytest.raises(ConfigError, match=r"nope\.cfg:0: cannot read the file"):
        load_cfg_model(tmp_path / "nope.cfg", tmp_path / "params.cfg")
    (tmp_path / "bin.cfg").write_bytes(b"[a]\nx=\xff\n")
    with pytest.raises(ConfigError, match="not a UTF-8 text file"):
        load_cfg_model(tmp_path / "bin.cfg")
    with pytest.raises(ConfigError, match=r"layers\.cfg:\d+: \[conv1\] conv layer has weights.*--params"):
        load_cfg_model(tmp_path / "layers.cfg")
    # structure only (for summaries): no params needed, and no learning groups
    bare = load_cfg_model(tmp_path / "layers.cfg", crop=32, require_params=False)
    assert sum(p.numel() for p in bare.parameters()) == 145_578
    with pytest.raises(ModelError, match="layer-parameter file"):
        bare.param_groups()


# ---------------------------------------------------------------------------------------------
# errors: one ConfigError, FILE:LINE: [section] message

def test_error_unknown_type() -> None:
    layers = edit(LAYERS, "type=pool", "type=pooling")
    expect_error(f"layers.cfg:{line_of(layers, 'pool1', 'type')}: [pool1]", "unknown layer type 'pooling'", layers)


def test_error_missing_type_and_missing_required_key() -> None:
    layers = edit(LAYERS, "type=pool\n", "")
    expect_error(f"layers.cfg:{line_of(layers, 'pool1')}: [pool1]", "missing required key 'type'", layers)
    layers = edit(LAYERS, "filters=16\n", "")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1')}: [conv1]", "missing required key 'filters'", layers)


def test_error_unknown_key() -> None:
    layers = edit(LAYERS, "filters=16\n", "filters=16\nfiltres=16\n")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'filtres')}: [conv1]", "unknown key 'filtres'", layers)
    params = edit(PARAMS, "epsW=0.01\n", "epsw=0.01\n")
    expect_error(f"params.cfg:{line_of(params, 'fc10', 'epsw')}: [fc10]", "unknown key 'epsw'", params=params)


def test_error_input_names_no_layer() -> None:
    layers = edit(LAYERS, "inputs=rnorm1", "inputs=rnorm2")
    expect_error(f"layers.cfg:{line_of(layers, 'fc10', 'inputs')}: [fc10]", "input 'rnorm2' names no layer", layers)


def test_error_cycle() -> None:
    layers = edit(LAYERS, "inputs=pool1", "inputs=fc10")  # rnorm1 <- fc10 <- rnorm1
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1', 'inputs')}: [rnorm1]",
                 "inputs form a cycle: rnorm1 <- fc10 <- rnorm1", layers)


def test_error_channel_mismatch() -> None:
    layers = edit(LAYERS, "channels=3", "channels=4")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'channels')}: [conv1]",
                 "channels=4 but input 'data' has 3 channels", layers)
    layers = edit(LAYERS, "size=5", "size=5\nchannels=32")
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1', 'channels')}: [rnorm1]",
                 "channels=32 but input 'pool1' has 16 channels", layers)


def test_error_params_section_without_layer() -> None:
    params = PARAMS + "\n[conv9]\nepsW=0.1\n"
    expect_error(f"params.cfg:{line_of(params, 'conv9')}: [conv9]", "no layer named 'conv9' in layers.cfg",
                 params=params)


def test_error_weight_layer_without_params_section() -> None:
    params = PARAMS.replace("[fc10]\nepsW=0.01\nepsB=0.02\nmomW=0.5\nmomB=0.6\nwc=0.1\n", "")
    expect_error(f"layers.cfg:{line_of(LAYERS, 'fc10')}: [fc10]", "no [fc10] section in params.cfg", params=params)


def test_error_missing_learning_parameter() -> None:
    params = edit(PARAMS, "momB=0.6\n", "")
    expect_error(f"params.cfg:{line_of(params, 'fc10')}: [fc10]", "missing required key 'momB'", params=params)


def test_error_non_numeric_values() -> None:
    layers = edit(LAYERS, "stride=2\ninitW", "stride=two\ninitW")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'stride')}: [conv1]", "expected a whole number", layers)
    params = edit(PARAMS, "wc=0.004", "wc=high")
    expect_error(f"params.cfg:{line_of(params, 'conv1', 'wc')}: [conv1]", "expected a number, got 'high'",
                 params=params)


def test_error_duplicates() -> None:
    layers = LAYERS + "\n[pool1]\ntype=pool\n"
    expect_error(f"layers.cfg:{len(LAYERS.split(chr(10))) + 1}: [pool1]", "duplicate section", layers)
    layers = edit(LAYERS, "sizeX=3\n", "sizeX=3\nsizeX=2\n")
    expect_error(f"layers.cfg:{line_of(LAYERS, 'pool1', 'sizeX') + 1}: [pool1]", "duplicate key 'sizeX'", layers)


def test_error_cost_layer_problems() -> None:
    layers = edit(LAYERS, "[probs]\ntype=softmax\ninputs=fc10\n\n", "")
    layers = edit(layers, "inputs=labels,probs", "inputs=labels,fc10")
    expect_error(f"layers.cfg:{line_of(layers, 'logprob', 'inputs')}: [logprob]",
                 "second input 'fc10' must be a softmax layer", layers)
    layers = edit(LAYERS, "dataIdx=1", "dataIdx=0")  # 'labels' now delivers images
    expect_error(f"layers.cfg:{line_of(layers, 'logprob', 'inputs')}: [logprob]",
                 "first input 'labels' must be the label data layer", layers)
    layers = LAYERS[:LAYERS.index("[logprob]")].rstrip("\n") + "\n"  # reported at the last line
    expect_error(f"layers.cfg:{line_of(layers, 'probs', 'inputs')}:", "no cost.logreg layer", layers)
    layers = LAYERS + "\n[cost2]\ntype=cost.logreg\ninputs=labels,probs\n"
    expect_error(f"layers.cfg:{line_of(layers, 'cost2')}: [cost2]", "only one cost layer", layers)


def test_error_labels_unused_layer_and_class_count() -> None:
    layers = edit(LAYERS, "inputs=rnorm1", "inputs=labels")
    # rnorm1 is now unused: cuda-convnet's check, reported before shapes
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1')}: [rnorm1]", "not used by any other layer", layers)
    layers = edit(LAYERS, "inputs=rnorm1", "inputs=rnorm1,labels")
    expect_error(f"layers.cfg:{line_of(layers, 'fc10', 'inputs')}: [fc10]", "label data layer", layers)
    # the file decides the class count; data with another count is refused at the outputs line
    layers = edit(LAYERS, "outputs=10", "outputs=20")
    model = build(layers)
    assert model.num_classes == 20 and model(torch.randn(2, 3, 24, 24)).shape == (2, 20)
    with pytest.raises(ConfigError) as info:
        model.check_classes([f"c{i}" for i in range(10)])
    assert str(info.value).startswith(f"layers.cfg:{line_of(layers, 'fc10', 'outputs')}: [fc10] ")
    assert "20 class scores" in str(info.value) and "data has 10 classes" in str(info.value)
    model.check_classes([f"c{i}" for i in range(20)])
    layers = edit(LAYERS, "outputs=10", "outputs=1")
    expect_error(f"layers.cfg:{line_of(layers, 'fc10', 'outputs')}: [fc10]", "a classifier needs 2 or more", layers)


def test_error_geometry() -> None:
    layers = edit(LAYERS, "filterSize=5", "filterSize=29")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'filterSize')}: [conv1]", "exceeds the padded image", layers)
    layers = edit(LAYERS, "sizeX=3\nstride=2", "sizeX=3\nstride=4")
    expect_error(f"layers.cfg:{line_of(layers, 'pool1', 'stride')}: [pool1]", "stride=4 must be <= sizeX=3", layers)
    layers = edit(LAYERS, "sizeX=3\nstride=2", "sizeX=3\nstride=2\noutputsX=9")
    expect_error(f"layers.cfg:{line_of(layers, 'pool1', 'outputsX')}: [pool1]", "entirely outside", layers)
    layers = edit(LAYERS, "filters=16", "filters=16\ngroups=2")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'groups')}: [conv1]", "do not split into groups=2", layers)
    layers = edit(LAYERS, "size=5", "size=17")
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1', 'size')}: [rnorm1]", "exceeds the 16 input maps", layers)


def test_error_wrong_number_of_inputs_and_list_lengths() -> None:
    layers = edit(LAYERS, "inputs=conv1", "inputs=conv1,conv1")
    expect_error(f"layers.cfg:{line_of(layers, 'pool1', 'inputs')}: [pool1]", "takes exactly 1 input(s), got 2",
                 layers)
    layers = edit(LAYERS, "initW=0.01", "initW=0.01,0.02")
    expect_error(f"layers.cfg:{line_of(layers, 'conv1', 'initW')}: [conv1]", "2 values for 1 input(s)", layers)


def test_error_norm_constants() -> None:
    layers = edit(LAYERS, "size=5", "size=5\nscale=0.1")
    expect_error(f"params.cfg:{line_of(PARAMS, 'rnorm1', 'scale')}: [rnorm1]", "also set in the layer file", layers)
    params = edit(PARAMS, "scale=0.001\n", "")
    expect_error(f"layers.cfg:{line_of(LAYERS, 'rnorm1')}: [rnorm1]", "needs 'scale'", params=params)
    layers = edit(LAYERS, "size=5", "size=5\nsizeX=5")
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1', 'sizeX')}: [rnorm1]", "not both", layers)


def test_error_reserved_layer_name_and_bad_crop() -> None:
    layers = LAYERS.replace("conv1", "forward")
    params = PARAMS.replace("conv1", "forward")
    expect_error(f"layers.cfg:{line_of(layers, 'forward')}: [forward]", "clashes with a model attribute",
                 layers, params)
    with pytest.raises(ModelError, match="crop"):
        build(crop=0)


# ---------------------------------------------------------------------------------------------
# memory estimate, class count, quoted values

@pytest.mark.parametrize("name", ["cc-11pct", "cc-18pct"])
def test_memory_estimate_counts_every_parameter(name: str) -> None:
    model = create_model(name)
    budget = model.memory_estimate
    assert budget.params == sum(p.numel() for p in model.parameters())
    assert [layer.name for layer in budget.layers if layer.params] == [n for n, _ in model.named_children()
                                                                       if any(True for _ in _.parameters())]
    assert budget.limit is None or budget.limit > 0


def test_memory_limit_refuses_the_layer_that_goes_over() -> None:
    from localconv.configs.memory import BYTES_PER_PARAM

    small = build()
    need = small.memory_estimate.needed()
    assert build(memory_limit=need).num_classes == 10  # exactly enough
    conv1 = small.conv1.weight.numel() + small.conv1.bias.numel()
    # room for conv1 but not for fc10: refused at fc10's outputs line, before fc10 is allocated
    expect_error(f"layers.cfg:{line_of(LAYERS, 'fc10', 'outputs')}: [fc10]", "make the layer smaller",
                 memory_limit=(conv1 + 10) * BYTES_PER_PARAM + 100_000)
    expect_error(f"layers.cfg:{line_of(LAYERS, 'conv1', 'filters')}: [conv1]", "available (memory_limit)",
                 memory_limit=3 * 24 * 24 * 8 + 100)  # the images, but not conv1


def test_num_classes_sets_the_logits_layer_and_is_kept_in_the_spec() -> None:
    model = build(num_classes=4)
    assert model.num_classes == 4 and model.fc10.out_features == 4 and model.cfg_spec["num_classes"] == 4
    assert build_cfg_model_from_spec(model.cfg_spec).fc10.out_features == 4
    assert "num_classes" not in build().cfg_spec  # specs of runs written before stay as they were
    layers = edit(LAYERS, "inputs=fc10", "inputs=rnorm1")  # the softmax reads a norm layer's maps
    layers = edit(layers, "[fc10]\ntype=fc\ninputs=rnorm1\noutputs=10\n\n", "")
    params = edit(PARAMS, "[fc10]\nepsW=0.01\nepsB=0.02\nmomW=0.5\nmomB=0.6\nwc=0.1\n\n", "")
    assert build(layers, params).num_classes == 16 * 6 * 6
    expect_error(f"layers.cfg:{line_of(layers, 'rnorm1')}: [rnorm1]", "only an fc layer's outputs", layers,
                 params, num_classes=4)


def test_quoted_values_are_cut() -> None:
    from localconv.configs.parser import clip

    assert clip("abc") == "abc" and clip("x" * 61) == "x" * 60 + "...(61 chars)"
    long = "relu" * 10_000
    for layers in (edit(LAYERS, "neuron=relu", f"neuron={long}"), edit(LAYERS, "stride=2\n", f"stride={long}\n"),
                   edit(LAYERS, "[conv1]", "[conv1]\n" + "y" * 5000), edit(LAYERS, "type=conv", f"type={long}"),
                   edit(LAYERS, "[conv1]", f"[{'c' * 5000}]"), edit(LAYERS, "stride=2\n", f"{'k' * 5000}=2\n")):
        with pytest.raises(ConfigError) as info:
            build(layers)
        assert len(str(info.value)) < 400 and "chars)" in str(info.value), str(info.value)[:400]
