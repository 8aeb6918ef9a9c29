"""export_onnx, the ONNX → registry rebuild, and `dgmscan export`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from scanner.architectures import build
from scanner.commands import export as export_command
from scanner.errors import InvalidModelError
from scanner.loading import load_generator
from scanner.onnx import export_onnx, generator_from_onnx, inspect_onnx, registry_generator_from_onnx


def main(argv: list[str]) -> int:
    """`dgmscan export ARGV` through the verb's own parser and handler (as scanner.cli wires them)."""
    assert argv[0] == "export"
    parser = argparse.ArgumentParser(prog="dgmscan export")
    export_command.add_arguments(parser)
    return export_command.run(parser.parse_args(argv[1:]))


@pytest.fixture(scope="module")
def dcgan_onnx(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    generator = build("dcgan28", {"base": 8, "latent_dim": 16})
    for m in generator.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.3)
            m.running_var.uniform_(0.5, 1.5)
    generator.eval()
    path = tmp_path_factory.mktemp("export") / "dcgan.onnx"
    export_onnx(generator, path)
    return generator, path


def test_export_writes_specs_and_dynamic_batch(dcgan_onnx) -> None:
    generator, path = dcgan_onnx
    model = onnx.load(str(path))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["dgmscan.architecture"] == "dcgan28"
    assert json.loads(props["dgmscan.architecture_config"]) == {"base": 8, "channels": 1, "latent_dim": 16}
    assert json.loads(props["dgmscan.latent"]) == generator.latent.to_dict()
    assert json.loads(props["dgmscan.output"]) == generator.output.to_dict()
    assert [i.name for i in model.graph.input] == ["z"] and [o.name for o in model.graph.output] == ["x"]
    assert model.graph.node[-1].op_type == "Tanh"  # the exported graph includes the final activation
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        z = generator.sample_latent(batch, seed=batch)
        (x,) = session.run(None, {"z": z.numpy()})
        assert x.shape == (batch, 1, 28, 28)
        assert np.abs(x - generator.generate(z).numpy()).max() <= 1e-4


def test_onnx_to_registry_rebuild_reproduces_outputs(dcgan_onnx) -> None:
    generator, path = dcgan_onnx
    loaded = generator_from_onnx(inspect_onnx(path)[0])
    rebuilt = registry_generator_from_onnx(loaded)
    assert rebuilt.architecture == "dcgan28" and rebuilt.source_format == "registry"
    z = generator.sample_latent(5, seed=3)
    assert (rebuilt.generate(z) - generator.generate(z)).abs().max() <= 1e-5
    with pytest.raises(InvalidModelError, match="no ONNX tensor fits|do not reproduce"):
        registry_generator_from_onnx(loaded, architecture="vae_mnist_decoder")


def test_modified_onnx_generator_is_written_back_into_its_graph(dcgan_onnx, tmp_path: Path) -> None:
    _, path = dcgan_onnx
    loaded = generator_from_onnx(inspect_onnx(path)[0])
    z = loaded.sample_latent(4, seed=5)
    before = loaded.generate(z)
    tuned = loaded.copy()  # what sanitization does: fine-tune a copy
    with torch.no_grad():
        tuned.layers()[-1].weight.mul_(0.5)
    out = tmp_path / "tuned.onnx"
    export_onnx(tuned, out)
    reloaded = generator_from_onnx(inspect_onnx(out)[0])
    assert (reloaded.generate(z) - tuned.generate(z)).abs().max() <= 1e-5
    assert not torch.allclose(reloaded.generate(z), before, atol=1e-3)
    assert torch.equal(loaded.generate(z), before)  # the caller's generator is untouched
    node_ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert node_ops == [n.op_type for n in onnx.load(str(path)).graph.node]  # same topology


@pytest.mark.parametrize("name", ["vae_mnist_decoder", "wavegan"])
def test_cli_round_trip_safetensors_onnx_safetensors(name: str, tmp_path: Path) -> None:
    from scanner.formats.safetensors_io import save_safetensors

    config = {"vae_mnist_decoder": {"hidden": 16}, "wavegan": {"d": 2}}[name]
    torch.manual_seed(1)
    generator = build(name, config).eval()
    source = tmp_path / "g.safetensors"
    save_safetensors(generator, source)
    assert main(["export", "--model", str(source), "--out", str(tmp_path / "g.onnx")]) == 0
    assert main(["export", "--model", str(tmp_path / "g.onnx"), "--out", str(tmp_path / "back.safetensors")]) == 0
    back = load_generator(tmp_path / "back.safetensors")
    via_onnx = load_generator(tmp_path / "g.onnx")
    z = generator.sample_latent(3, seed=9)
    assert back.architecture == name and via_onnx.source_format == "onnx"
    assert (back.generate(z) - generator.generate(z)).abs().max() <= 1e-5
    assert (via_onnx.generate(z) - generator.generate(z)).abs().max() <= 1e-4


def test_cli_refuses_unknown_suffix_and_unsafe_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "evil.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "out.onnx")]) == 2
    assert main(["export", "--model", str(bad), "--out", str(tmp_path / "out.txt")]) == 2
    err = capsys.readouterr().err
    assert "dgmscan export:" in err and ".onnx or .safetensors" in err
    assert not (tmp_path / "out.onnx").exists()


def _branchy_model() -> onnx.ModelProto:
    """x = reshape(z @ W_then) if max(z) > 10 else reshape(z @ W_else): weights inside If branches."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def branch(tag: str) -> onnx.GraphProto:
        w = numpy_helper.from_array(rng.normal(size=(8, 12)).astype(np.float32), f"W_{tag}")
        shape = numpy_helper.from_array(np.array([-1, 1, 12], np.int64), f"shape_{tag}")
        return helper.make_graph(
            [
                helper.make_node("MatMul", ["z", f"W_{tag}"], [f"h_{tag}"]),
                helper.make_node("Reshape", [f"h_{tag}", f"shape_{tag}"], [f"o_{tag}"]),
            ],
            tag,
            [],
            [helper.make_tensor_value_info(f"o_{tag}", TensorProto.FLOAT, ["batch", 1, 12])],
            [w, shape],
        )

    nodes = [
        helper.make_node("ReduceMax", ["z"], ["m"], keepdims=0),
        helper.make_node("Greater", ["m", "ten"], ["cond"]),
        helper.make_node("If", ["cond"], ["x"], then_branch=branch("then"), else_branch=branch("else")),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 12])],
        [numpy_helper.from_array(np.float32(10.0), "ten")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_weights_inside_if_branches_are_written_back(tmp_path: Path) -> None:
    source = tmp_path / "branchy.onnx"
    source.write_bytes(_branchy_model().SerializeToString())
    loaded = generator_from_onnx(inspect_onnx(source)[0])
    assert len(loaded.layers()) == 2  # one nn.Linear per branch, visible to the checks
    tuned = loaded.copy()
    with torch.no_grad():
        for li in tuned.layers():
            li.weight.mul_(-2.0)
    out = tmp_path / "tuned.onnx"
    export_onnx(tuned, out)
    reloaded = generator_from_onnx(inspect_onnx(out)[0])
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for z in (torch.randn(3, 8), torch.full((2, 8), 11.0)):  # else branch, then branch
        assert (reloaded.generate(z) - tuned.generate(z)).abs().max() <= 1e-5
        (x,) = session.run(None, {"z": z.numpy()})
        assert np.abs(x - tuned.generate(z).numpy()).max() <= 1e-4
        assert not torch.allclose(loaded.generate(z), tuned.generate(z))
