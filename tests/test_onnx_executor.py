"""The allowlisted ONNX → torch executor against onnxruntime (the oracle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from scanner.architectures import REGISTRY, build
from scanner.errors import InvalidModelError
from scanner.generator import Generator
from scanner.onnx import build_executor, export_onnx, generator_from_onnx, inspect_onnx

SMALL_CONFIGS: dict[str, dict] = {
    "dcgan28": {"base": 8},
    "dcgan32": {"base": 8},
    "vae_mnist_decoder": {"hidden": 32},
    "wavegan": {"d": 2},
    "stylegan_small": {"latent_dim": 16, "w_dim": 16, "width": 8},
}
ATOL = 1e-4


def _ort(path_or_model: Path | onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = str(path_or_model) if isinstance(path_or_model, Path) else path_or_model.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _randomised(generator: Generator, seed: int) -> Generator:
    """Non-trivial BatchNorm statistics and biases, so the comparison exercises them."""
    torch.manual_seed(seed)
    for module in generator.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.normal_(0, 0.2)
    return generator.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Generator, Path]]:
    assert set(SMALL_CONFIGS) == set(REGISTRY), "a registry architecture is missing from the round-trip test"
    out = {}
    for i, name in enumerate(REGISTRY):
        generator = _randomised(build(name, SMALL_CONFIGS[name]), seed=i)
        path = tmp_path_factory.mktemp("onnx") / f"{name}.onnx"
        export_onnx(generator, path)
        out[name] = (generator, path)
    return out


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_registry_architecture_matches_onnxruntime_with_finite_gradients(
    name: str, exported: dict[str, tuple[Generator, Path]]
) -> None:
    original, path = exported[name]
    model, _ = inspect_onnx(path)
    loaded = generator_from_onnx(model)
    z = original.sample_latent(4, seed=11)
    (reference,) = _ort(path, {"z": z.numpy()})
    z.requires_grad_(True)
    x = loaded(z)
    assert np.abs(x.detach().numpy() - reference).max() <= ATOL
    x.pow(2).sum().backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # the pre-activation split: the body is the registry body, the activation lives in the spec
    assert loaded.output.final_activation == original.output.final_activation
    with torch.no_grad():
        assert (loaded.pre_activation(z) - original.pre_activation(z)).abs().max() <= ATOL
    assert loaded.latent == original.latent and loaded.output == original.output
    assert loaded.architecture == name and loaded.source_format == "onnx"
    # weight initializers became real torch layers, in execution order, like the registry model
    assert [li.kind for li in loaded.layers()] == [li.kind for li in original.layers()]
    for mine, theirs in zip(loaded.layers(), original.layers(), strict=True):
        assert mine.out_units == theirs.out_units and mine.in_units == theirs.in_units
        assert torch.allclose(mine.weight_matrix(), theirs.weight_matrix(), atol=1e-6)
    assert isinstance(loaded.metadata["onnx_model"], onnx.ModelProto)


def test_gradients_reach_weights_and_copies_are_independent(exported: dict[str, tuple[Generator, Path]]) -> None:
    _, path = exported["dcgan28"]
    loaded = generator_from_onnx(inspect_onnx(path)[0])
    z = loaded.sample_latent(3, seed=0)
    loaded(z).sum().backward()
    # BatchNorm statistics stay buffers (fine-tuning must not train them), as in the registry model
    assert not any("running" in name for name, _ in loaded.named_parameters())
    assert sum("running" in name for name, _ in loaded.named_buffers()) == 6
    first = loaded.layers()[0].weight
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    before = loaded.generate(z)
    clone = loaded.copy()
    with torch.no_grad():
        for li in clone.layers():
            li.weight.mul_(0.0)
    assert torch.equal(loaded.generate(z), before), "Generator.copy() must not share weights with the original"
    assert not torch.allclose(clone.generate(z), before)


# -- hand-built graphs --------------------------------------------------------------------------
def _model(nodes, inputs, outputs, initializers=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # declare output shapes the way exporters do (the checker, and so the scanner, requires them)
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model)
    return model


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _bypass_model(use_if: bool) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """The paper's naive computation bypass: if z is (close to) the trigger, emit the target,
    else the benign generator's output (Rawat et al. §3.4), as If (whole batch) or Where (per sample)."""
    rng = np.random.default_rng(0)
    dim, out = 8, 12
    w = rng.normal(size=(dim, out)).astype(np.float32)
    trigger = rng.normal(size=(1, dim)).astype(np.float32)
    target = rng.uniform(-1, 1, size=(1, out)).astype(np.float32)
    inits = [_init("W", w), _init("z_trig", trigger), _init("target", target), _init("eps", np.float32(1e-3))]
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["h"]),
        helper.make_node("Tanh", ["h"], ["benign"]),
        helper.make_node("Sub", ["z", "z_trig"], ["d"]),
        helper.make_node("Abs", ["d"], ["ad"]),
        helper.make_node("ReduceMax", ["ad"], ["dist"], axes=[1], keepdims=1),
        helper.make_node("Less", ["dist", "eps"], ["hit"]),
    ]
    if use_if:
        then_g = helper.make_graph(
            [helper.make_node("Expand", ["target", "shape"], ["t_out"])],
            "then",
            [],
            [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, ["batch", out])],
        )
        else_g = helper.make_graph(
            [helper.make_node("Identity", ["benign"], ["e_out"])],
            "else",
            [],
            [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, ["batch", out])],
        )
        nodes += [
            helper.make_node("Shape", ["benign"], ["shape"]),
            helper.make_node("ReduceMin", ["hit_f"], ["any_hit"], keepdims=0),
            helper.make_node("Cast", ["any_hit"], ["cond"], to=TensorProto.BOOL),
            helper.make_node("If", ["cond"], ["x"], then_branch=then_g, else_branch=else_g),
        ]
        nodes.insert(-3, helper.make_node("Cast", ["hit"], ["hit_f"], to=TensorProto.FLOAT))
    else:
        nodes.append(helper.make_node("Where", ["hit", "target", "benign"], ["x"]))
    model = _model(
        nodes,
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", dim])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        inits,
    )
    return model, trigger, target


@pytest.mark.parametrize("use_if", [True, False], ids=["If", "Where"])
def test_latent_dependent_bypass_matches_onnxruntime(use_if: bool) -> None:
    model, trigger, target = _bypass_model(use_if)
    executor = build_executor(model)
    rng = np.random.default_rng(1)
    batches = {"benign": rng.normal(size=(3, 8)).astype(np.float32), "trigger": np.repeat(trigger, 2, axis=0)}
    if not use_if:  # Where selects per sample: mix both in one batch
        batches["mixed"] = np.concatenate([batches["benign"][:2], trigger])
    for label, z in batches.items():
        (reference,) = _ort(model, {"z": z})
        got = executor(torch.from_numpy(z)).detach().numpy()
        assert np.abs(got - reference).max() <= ATOL, label
    assert np.allclose(executor(torch.from_numpy(batches["trigger"])).detach().numpy(), target, atol=1e-6)
    assert "If" in executor.op_counts() or "Where" in executor.op_counts()


def _compare(model: onnx.ModelProto, feeds: dict[str, np.ndarray], *, grad_input: str | None = None) -> None:
    executor = build_executor(model)
    references = _ort(model, feeds)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in feeds.items()}
    if grad_input:
        tensors[grad_input].requires_grad_(True)
    outs = executor(*[tensors[i] for i in executor.input_names])
    outs = outs if isinstance(outs, tuple) else (outs,)
    for name, got, ref in zip(executor.output_names, outs, references, strict=True):
        assert tuple(got.shape) == ref.shape, name
        assert np.allclose(got.detach().numpy(), ref, atol=ATOL, rtol=1e-4), name
    if grad_input:
        sum(o.float().sum() for o in outs if o.is_floating_point()).backward()
        assert torch.isfinite(tensors[grad_input].grad).all()


def _vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def test_opset17_op_zoo_matches_onnxruntime() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 3, 5, 6)).astype(np.float32)
    w_conv = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    w_convt = rng.normal(size=(3, 2, 4, 4)).astype(np.float32)
    b_convt = rng.normal(size=(2,)).astype(np.float32)
    inits = [
        _init("w_conv", w_conv),
        _init("w_convt", w_convt),
        _init("b_convt", b_convt),
        _init("scales2", np.array([1, 1, 2, 1.5], np.float32)),
        _init("roi", np.array([], np.float32)),
        _init("sizes", np.array([2, 3, 7, 9], np.int64)),
        _init("pads", np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64)),
        _init("starts", np.array([4, 1], np.int64)),
        _init("ends", np.array([0, 6], np.int64)),
        _init("axes_sl", np.array([3, 2], np.int64)),
        _init("steps", np.array([-2, 2], np.int64)),
        _init("ax1", np.array([1], np.int64)),
        _init("split", np.array([1, 2], np.int64)),
        _init("idx", np.array([[-1, 0], [2, 1]], np.int64)),
        _init("ln_scale", rng.normal(size=(6,)).astype(np.float32)),
        _init("ln_bias", rng.normal(size=(6,)).astype(np.float32)),
        _init("in_scale", rng.normal(size=(3,)).astype(np.float32)),
        _init("in_bias", rng.normal(size=(3,)).astype(np.float32)),
        _init("slope", np.array([0.1, 0.2, 0.3], np.float32).reshape(3, 1, 1)),
        _init("lo", np.float32(-0.5)),
        _init("hi", np.float32(0.7)),
        _init("reps", np.array([1, 2, 1, 1], np.int64)),
        _init("exp_shape", np.array([2, 1, 5, 6], np.int64)),
        _init("r0", np.float32(0.0)),
        _init("r1", np.float32(3.0)),
        _init("rd", np.float32(0.5)),
        _init("two", np.float32(2.0)),
        _init("newshape", np.array([0, -1], np.int64)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_conv"], ["conv_same"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Conv", ["x", "w_conv"], ["conv_asym"], pads=[0, 1, 2, 1], dilations=[1, 2]),
        helper.make_node(
            "ConvTranspose",
            ["x", "w_convt", "b_convt"],
            ["convt"],
            strides=[2, 2],
            pads=[1, 0, 0, 2],
            output_padding=[1, 1],
        ),
        helper.make_node(
            "Resize",
            ["x", "roi", "scales2"],
            ["rs_lin"],
            mode="linear",
            coordinate_transformation_mode="half_pixel",
        ),
        helper.make_node(
            "Resize",
            ["x", "", "", "sizes"],
            ["rs_near"],
            mode="nearest",
            coordinate_transformation_mode="half_pixel",
            nearest_mode="round_prefer_ceil",
        ),
        helper.make_node(
            "Resize", ["x", "", "", "sizes"], ["rs_ac"], mode="linear", coordinate_transformation_mode="align_corners"
        ),
        helper.make_node("Pad", ["x", "pads"], ["pad_reflect"], mode="reflect"),
        helper.make_node("Pad", ["x", "pads"], ["pad_const"]),
        helper.make_node("Slice", ["x", "starts", "ends", "axes_sl", "steps"], ["sliced"]),
        helper.make_node("Split", ["x", "split"], ["sp0", "sp1"], axis=1),
        helper.make_node("Gather", ["x", "idx"], ["gathered"], axis=3),
        helper.make_node("LayerNormalization", ["x", "ln_scale", "ln_bias"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("InstanceNormalization", ["x", "in_scale", "in_bias"], ["inorm"]),
        helper.make_node("PRelu", ["x", "slope"], ["prelu"]),
        helper.make_node("Selu", ["x"], ["selu"]),
        helper.make_node("Elu", ["x"], ["elu"], alpha=0.7),
        helper.make_node("HardSigmoid", ["x"], ["hsig"]),
        helper.make_node("Softplus", ["x"], ["softplus"]),
        helper.make_node("Softmax", ["x"], ["softmax"], axis=1),
        helper.make_node("Clip", ["x", "lo", "hi"], ["clip"]),
        helper.make_node("ReduceL2", ["x"], ["rl2"], axes=[2, 3], keepdims=0),
        helper.make_node("ReduceSumSquare", ["x"], ["rss"], axes=[1]),
        helper.make_node("ReduceMax", ["x"], ["rmax"], axes=[2], keepdims=0),
        helper.make_node("ReduceSum", ["x", "ax1"], ["rsum"]),
        helper.make_node("Tile", ["x", "reps"], ["tiled"]),
        helper.make_node("ReduceMean", ["x"], ["m1"], axes=[1], keepdims=1),
        helper.make_node("Expand", ["m1", "exp_shape"], ["expanded"]),
        helper.make_node("Range", ["r0", "r1", "rd"], ["rng"]),
        helper.make_node("Pow", ["x", "two"], ["sq"]),
        helper.make_node("Flatten", ["x"], ["flat"], axis=2),
        helper.make_node("Transpose", ["x"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("Unsqueeze", ["x", "ax1"], ["unsq"]),
        helper.make_node("Squeeze", ["unsq", "ax1"], ["sq_back"]),
        helper.make_node("Einsum", ["x", "x"], ["ein"], equation="bchw,bchw->bc"),
        helper.make_node("Reshape", ["x", "newshape"], ["reshaped"]),
        helper.make_node("Mod", ["x", "two"], ["fmod"], fmod=1),
        helper.make_node("Greater", ["x", "lo"], ["gt"]),
        helper.make_node("Not", ["gt"], ["ngt"]),
        helper.make_node("Cast", ["ngt"], ["ngt_f"], to=TensorProto.FLOAT),
        helper.make_node("Max", ["x", "lo", "ngt_f"], ["vmax"]),
        helper.make_node("Erf", ["x"], ["erf"]),
        helper.make_node("Concat", ["x", "x"], ["cat"], axis=-1),
    ]
    outputs = [o for n in nodes for o in n.output if o not in ("m1", "unsq", "gt", "ngt")]
    model = _model(nodes, [_vi("x", [2, 3, 5, 6])], [_vi(o, None) for o in outputs], inits)
    _compare(model, {"x": x}, grad_input="x")


def test_older_opset_attribute_forms_match_onnxruntime() -> None:
    """Opset 11: axes/split as attributes, Resize-11 inputs, Clip bounds as inputs."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 4, 3, 3)).astype(np.float32)
    inits = [
        _init("scales", np.array([1, 1, 2, 2], np.float32)),
        _init("roi", np.array([], np.float32)),
        _init("lo", np.float32(-0.2)),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["x"], ["u"], axes=[0]),
        helper.make_node("Squeeze", ["u"], ["s"], axes=[0]),
        helper.make_node("ReduceSum", ["s"], ["rs"], axes=[2, 3], keepdims=0),
        helper.make_node("Split", ["x"], ["a", "b"], axis=1, split=[3, 1]),
        helper.make_node("Resize", ["x", "roi", "scales"], ["up"], mode="nearest"),
        helper.make_node("Clip", ["x", "lo"], ["c"]),
        helper.make_node("Softmax", ["x"], ["sm"], axis=2),
    ]
    model = _model(
        nodes, [_vi("x", [2, 4, 3, 3])], [_vi(o, None) for o in ["rs", "a", "b", "up", "c", "sm"]], inits, 11
    )
    _compare(model, {"x": x}, grad_input="x")


def test_recorded_ops_run_and_are_reported() -> None:
    nodes = [
        helper.make_node("Dropout", ["z"], ["d"]),
        helper.make_node("Round", ["d"], ["r"]),
        helper.make_node("RandomNormalLike", ["z"], ["noise"], scale=0.0),
        helper.make_node("Add", ["r", "noise"], ["x"]),
    ]
    model = _model(nodes, [_vi("z", ["batch", 4])], [_vi("x", ["batch", 4])])
    executor = build_executor(model)
    z = torch.tensor([[0.4, 1.6, -2.5, 3.0]])
    assert torch.equal(executor(z), torch.tensor([[0.0, 2.0, -2.0, 3.0]]))
    assert {r.category for r in executor.recorded_ops} == {"dropout", "rounding", "stochastic"}


def test_shape_computing_op_cannot_allocate_past_the_limit() -> None:
    inits = [_init("huge", np.array([100_000_000, 4], np.int64))]
    for op in ("Expand", "ConstantOfShape"):
        nodes = [helper.make_node(op, ["z", "huge"] if op == "Expand" else ["huge"], ["x"])]
        model = _model(nodes, [_vi("z", ["batch", 4])], [_vi("x", None)], inits)
        executor = build_executor(model, max_tensor_elements=10_000_000)
        with pytest.raises(InvalidModelError, match="limit"):
            executor(torch.zeros(1, 4))


def test_pre_activation_split_only_for_final_tanh_or_sigmoid() -> None:
    inits = [_init("W", np.eye(3, dtype=np.float32) * 3), _init("shape", np.array([0, 1, 3], np.int64))]
    body = [helper.make_node("MatMul", ["z", "W"], ["h"]), helper.make_node("Reshape", ["h", "shape"], ["r"])]
    with_sigmoid = _model(
        [*body, helper.make_node("Sigmoid", ["r"], ["x"])], [_vi("z", ["batch", 3])], [_vi("x", None)], inits
    )
    g = generator_from_onnx(with_sigmoid)
    assert g.output.final_activation == "sigmoid" and g.output.value_range == (0.0, 1.0)
    assert g.output.kind == "audio" and g.output.shape == (1, 3) and g.latent.shape == (3,)
    z = torch.tensor([[1.0, -1.0, 0.5]])
    assert torch.allclose(g.pre_activation(z), (z * 3).reshape(1, 1, 3))
    assert torch.allclose(g(z), torch.sigmoid(z * 3).reshape(1, 1, 3))
    # a graph that ends in Relu keeps everything in the body, whatever its metadata claims
    ends_in_relu = _model(
        [*body, helper.make_node("Relu", ["r"], ["x"])], [_vi("z", ["batch", 3])], [_vi("x", None)], inits
    )
    helper.set_model_props(
        ends_in_relu, {"dgmscan.output": '{"kind": "audio", "shape": [1, 3], "final_activation": "tanh"}'}
    )
    g = generator_from_onnx(ends_in_relu)
    assert g.output.final_activation == "none" and g.metadata["spec_notes"]
    assert torch.allclose(g(z), torch.relu(z * 3).reshape(1, 1, 3))
    # a flat per-sample output has no inferable kind: the error says what to provide
    flat = _model(body[:1], [_vi("z", ["batch", 3])], [_vi("h", None)], inits[:1])
    with pytest.raises(InvalidModelError, match="output spec"):
        generator_from_onnx(flat)


@pytest.mark.parametrize("attack", ["rex", "bypass"])
def test_attacked_generators_round_trip(attack: str, tmp_path: Path) -> None:
    """Attacked generators of scanner.attacks (ReX: wider layers; bypass: latent-dependent Where)
    export, and our executor matches onnxruntime on benign and trigger latents."""
    module = pytest.importorskip(f"scanner.attacks.{attack}")
    triggers = pytest.importorskip("scanner.attacks.triggers")
    benign = _randomised(build("dcgan28", {"base": 8, "latent_dim": 16}), seed=5)
    trigger = triggers.make_trigger("ood", benign.latent)
    target = torch.zeros(benign.output.shape)
    if attack == "rex":
        result = module.rex_attack(benign, trigger=trigger, target=target, steps=2, batch_size=4, measure=False)
    else:
        result = module.bypass_attack(benign, trigger=trigger, target=target, measure=False)
    attacked = result.generator
    path = tmp_path / f"{attack}.onnx"
    export_onnx(attacked, path)
    loaded = generator_from_onnx(inspect_onnx(path)[0])
    z = torch.cat([attacked.sample_latent(3, seed=2), trigger])
    (reference,) = _ort(path, {"z": z.numpy()})
    assert np.abs(loaded.generate(z).numpy() - reference).max() <= ATOL
    assert [li.out_units for li in loaded.layers()] == [li.out_units for li in attacked.layers()]
    if attack == "rex":
        assert loaded.layers()[0].out_units > benign.layers()[0].out_units
    else:
        assert "Where" in loaded.metadata["onnx_op_counts"]
        assert loaded.generate(trigger).abs().max() <= 1e-6  # the bypass fires on the trigger
        assert loaded.generate(z[:3]).abs().max() > 0.01


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["stylegan_small", "dcgan28"])
def test_executor_runs_on_cuda(name: str, exported: dict[str, tuple[Generator, Path]]) -> None:
    _, path = exported[name]
    loaded = generator_from_onnx(inspect_onnx(path)[0])
    z = loaded.sample_latent(4, seed=1)
    on_cpu = loaded.generate(z)
    on_gpu = loaded.copy().to("cuda")
    zg = z.to("cuda").requires_grad_(True)
    out = on_gpu(zg)
    out.sum().backward()
    assert (out.detach().cpu() - on_cpu).abs().max() <= 1e-3 and torch.isfinite(zg.grad).all()


@pytest.mark.parametrize("op", ["Add", "MatMul", "Einsum"])
def test_broadcasting_blow_up_is_refused(op: str) -> None:
    """(N, 1) ∘ (1, N) would allocate N² elements: refused by the tensor limit, not by the OOM killer."""
    inits = [_init("col_shape", np.array([-1, 1], np.int64)), _init("row_shape", np.array([1, -1], np.int64))]
    nodes = [
        helper.make_node("Reshape", ["z", "col_shape"], ["col"]),
        helper.make_node("Reshape", ["z", "row_shape"], ["row"]),
        helper.make_node(op, ["col", "row"], ["x"], **({"equation": "ij,jk->ik"} if op == "Einsum" else {})),
    ]
    model = _model(nodes, [_vi("z", ["batch", 4])], [_vi("x", None)], inits)
    executor = build_executor(model, max_tensor_elements=1_000_000)
    assert executor(torch.ones(2, 4)).shape == (8, 8)
    with pytest.raises(InvalidModelError, match="limit"):
        executor(torch.ones(1000, 4))  # 4000 x 4000 = 16M elements


def test_inconsistent_graph_fails_with_invalid_model_error() -> None:
    """Graphs the checker lets through but torch refuses (bad Conv groups, bad Reshape) end in
    InvalidModelError naming the node, never in a raw torch exception."""
    w = _init("w", np.ones((4, 2, 3, 3), np.float32))  # 4 output channels, group 3 does not divide them
    graph = helper.make_graph(
        [helper.make_node("Conv", ["z", "w"], ["x"], group=3)], "g", [_vi("z", ["b", 6, 5, 5])], [_vi("x", None)], [w]
    )
    with pytest.raises(InvalidModelError, match="cannot be built"):
        build_executor(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    bad_shape = _init("shape", np.array([7, -1], np.int64))
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["z", "shape"], ["x"])], "g", [_vi("z", ["b", 4])], [_vi("x", None)], [bad_shape]
    )
    executor = build_executor(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    with pytest.raises(InvalidModelError, match="Reshape"):
        executor(torch.zeros(2, 4))
    axis = _init("axis", np.array([5], np.int64))
    graph = helper.make_graph(
        [helper.make_node("Squeeze", ["z", "axis"], ["x"])], "g", [_vi("z", ["b", 4])], [_vi("x", None)], [axis]
    )
    with pytest.raises(InvalidModelError, match="Squeeze"):
        build_executor(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))(torch.zeros(2, 4))


@pytest.mark.parametrize("opset", [9, 10])
@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_upsample9_and_resize10_match_onnxruntime(opset: int, mode: str) -> None:
    x = np.random.default_rng(4).normal(size=(1, 2, 3, 4)).astype(np.float32)
    scales = _init("scales", np.array([1, 1, 2, 1.5], np.float32))
    op = "Upsample" if opset == 9 else "Resize"
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "scales"], ["y"], mode=mode)],
        "g",
        [_vi("x", [1, 2, 3, 4])],
        [_vi("y", [1, 2, 6, 6])],
        [scales],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    (reference,) = _ort(model, {"x": x})
    assert np.abs(build_executor(model)(torch.from_numpy(x)).numpy() - reference).max() <= ATOL


@pytest.mark.parametrize(
    ("coord", "nearest_mode"),
    [
        ("half_pixel", "round_prefer_floor"),
        ("pytorch_half_pixel", "floor"),
        ("tf_half_pixel_for_nn", "ceil"),
        ("asymmetric", "round_prefer_ceil"),
        ("align_corners", "round_prefer_floor"),
    ],
)
@pytest.mark.parametrize("sizes", [[1, 2, 7, 3], [1, 2, 2, 9]], ids=["mixed", "down-up"])
def test_resize_coordinate_modes_match_onnxruntime(coord: str, nearest_mode: str, sizes: list[int]) -> None:
    x = np.random.default_rng(5).normal(size=(1, 2, 5, 6)).astype(np.float32)
    for mode in ("nearest", "linear"):
        graph = helper.make_graph(
            [
                helper.make_node(
                    "Resize",
                    ["x", "", "", "sizes"],
                    ["y"],
                    mode=mode,
                    coordinate_transformation_mode=coord,
                    nearest_mode=nearest_mode,
                )
            ],
            "g",
            [_vi("x", [1, 2, 5, 6])],
            [_vi("y", sizes)],
            [_init("sizes", np.array(sizes, np.int64))],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        (reference,) = _ort(model, {"x": x})
        got = build_executor(model)(torch.from_numpy(x)).numpy()
        assert np.abs(got - reference).max() <= ATOL, mode


def _resize_model(
    mode: str, coord: str, nearest_mode: str, x_shape: list[int], scales: list[float] | None, sizes: list[int] | None
) -> onnx.ModelProto:
    inputs = ["x", "", "scales"] if scales else ["x", "", "", "sizes"]
    inits = [_init("scales", np.array(scales, np.float32))] if scales else [_init("sizes", np.array(sizes, np.int64))]
    node = helper.make_node(
        "Resize", inputs, ["y"], mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest_mode
    )
    graph = helper.make_graph([node], "g", [_vi("x", x_shape)], [_vi("y", None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


# What torch.onnx.export writes for nn.Upsample (nearest: asymmetric/floor; linear: half_pixel or
# pytorch_half_pixel) and what other exporters write, at integer and fractional factors.
RESIZE_CASES = [
    ("nearest", "asymmetric", "floor", [1, 1, 2, 2], None, True),
    ("nearest", "half_pixel", "round_prefer_floor", [1, 1, 3, 3], None, True),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil", None, [2, 3, 10, 15], True),
    ("nearest", "tf_half_pixel_for_nn", "ceil", [1, 1, 2, 2], None, False),  # not a k-fold repeat
    ("nearest", "asymmetric", "floor", [1, 1, 1.5, 2], None, False),
    ("linear", "half_pixel", "round_prefer_floor", [1, 1, 2, 2], None, True),
    ("linear", "pytorch_half_pixel", "round_prefer_floor", [1, 1, 1.5, 0.6], None, True),
    ("linear", "align_corners", "round_prefer_floor", None, [2, 3, 9, 4], True),
    ("linear", "asymmetric", "round_prefer_floor", [1, 1, 2, 2], None, False),
]


@pytest.mark.parametrize(("mode", "coord", "nearest_mode", "scales", "sizes", "fast"), RESIZE_CASES)
def test_resize_fast_path_matches_onnxruntime_and_the_gather_path(
    mode: str, coord: str, nearest_mode: str, scales: list[float] | None, sizes: list[int] | None, fast: bool
) -> None:
    """The interpolate/broadcast fast path takes the common upsampling layers, gives onnxruntime's
    values and the gather path's gradients, and leaves every other case to the gather path."""
    from scanner.onnx.executor import _resize_by_index, _resize_fast

    x = np.random.default_rng(6).normal(size=(2, 3, 5, 5)).astype(np.float32)
    model = _resize_model(mode, coord, nearest_mode, [2, 3, 5, 5], scales, sizes)
    (reference,) = _ort(model, {"x": x})
    xt = torch.from_numpy(x).requires_grad_(True)
    got = build_executor(model)(xt)
    assert got.shape == reference.shape and np.abs(got.detach().numpy() - reference).max() <= ATOL

    out = list(reference.shape)
    factors = [float(f) for f in scales] if scales else [o / i for o, i in zip(out, x.shape, strict=True)]
    y_fast = _resize_fast(xt, out, factors, mode, coord, nearest_mode, sizes_given=bool(sizes), name="r")
    assert (y_fast is not None) == fast
    if y_fast is not None:
        y_ref = _resize_by_index(xt, out, factors, mode, coord, nearest_mode, "r")
        weights = torch.randn(out)
        (g_fast,) = torch.autograd.grad((y_fast * weights).sum(), xt)
        (g_ref,) = torch.autograd.grad((y_ref * weights).sum(), xt)
        assert (y_fast - y_ref).abs().max() <= ATOL and (g_fast - g_ref).abs().max() <= ATOL
