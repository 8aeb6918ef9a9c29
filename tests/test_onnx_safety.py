"""Safety analysis of untrusted ONNX files: op allowlist, external data, limits, corrupt input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from scanner.errors import InvalidModelError, RejectedModelError, UnsupportedOpError
from scanner.onnx import generator_from_onnx, inspect_onnx


def _vi(name: str, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _linear_model(extra_nodes=(), *, out="x", opset_imports=None) -> onnx.ModelProto:
    """z (batch, 4) -> MatMul W (4, 6) -> Reshape (batch, 1, 6) -> Tanh -> x."""
    w = numpy_helper.from_array(np.arange(24, dtype=np.float32).reshape(4, 6) / 24, "W")
    shape = numpy_helper.from_array(np.array([0, 1, 6], np.int64), "shape")
    nodes = [
        helper.make_node("MatMul", ["z", "W"], ["h"]),
        helper.make_node("Reshape", ["h", "shape"], ["r"]),
        *extra_nodes,
        helper.make_node("Tanh", ["r" if not extra_nodes else extra_nodes[-1].output[0]], [out]),
    ]
    graph = helper.make_graph(nodes, "g", [_vi("z", ["batch", 4])], [_vi(out, ["batch", 1, 6])], [w, shape])
    model = helper.make_model(graph, opset_imports=opset_imports or [helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_clean_model_loads_and_runs(tmp_path: Path) -> None:
    model, findings = inspect_onnx(_save(_linear_model(), tmp_path / "m.onnx"))
    assert findings == []
    g = generator_from_onnx(model)
    assert g.output.shape == (1, 6) and g.output.final_activation == "tanh"


def test_unknown_op_is_reported_by_name(tmp_path: Path) -> None:
    model = _linear_model([helper.make_node("FooBarOp", ["r"], ["f"])])
    with pytest.raises(UnsupportedOpError) as info:
        inspect_onnx(_save(model, tmp_path / "m.onnx"))
    assert [(f.code, f.detail["op_type"]) for f in info.value.findings] == [("onnx.unsupported_op", "FooBarOp")]
    assert "FooBarOp" in str(info.value) and all(f.severity == "high" for f in info.value.findings)


def test_custom_domain_op_is_reported_by_name(tmp_path: Path) -> None:
    node = helper.make_node("RunShell", ["r"], ["f"], domain="com.evil")
    model = _linear_model([node], opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.evil", 1)])
    with pytest.raises(RejectedModelError) as info:
        inspect_onnx(_save(model, tmp_path / "m.onnx"))
    (finding,) = info.value.findings
    assert finding.code == "onnx.custom_domain"
    assert finding.detail["op_type"] == "RunShell" and finding.detail["domain"] == "com.evil"


def test_disallowed_op_inside_an_if_branch_is_found(tmp_path: Path) -> None:
    branch = helper.make_graph([helper.make_node("Loop", ["", ""], ["o"])], "b", [], [_vi("o", ["batch", 1, 6])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = _linear_model([helper.make_node("If", ["cond"], ["i"], then_branch=branch, else_branch=branch)])
    model.graph.initializer.append(cond)
    with pytest.raises(UnsupportedOpError) as info:
        inspect_onnx(_save(model, tmp_path / "m.onnx"))
    assert {f.detail["op_type"] for f in info.value.findings} == {"Loop"}


def test_recorded_ops_are_low_severity_findings(tmp_path: Path) -> None:
    model = _linear_model([helper.make_node("Dropout", ["r"], ["d"]), helper.make_node("Sign", ["d"], ["s"])])
    _, findings = inspect_onnx(_save(model, tmp_path / "m.onnx"))
    assert {f.code for f in findings} == {"onnx.dropout_op", "onnx.rounding_op"}
    assert all(f.severity == "low" for f in findings)


def _external(model: onnx.ModelProto, location: str, data: bytes, offset: int = 0) -> onnx.ModelProto:
    """Point initializer W at external data `location`."""
    w = next(t for t in model.graph.initializer if t.name == "W")
    expected = bytes(w.raw_data) if w.raw_data else numpy_helper.to_array(w).tobytes()
    assert len(data) >= len(expected) or data == b""
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(expected)))):
        w.external_data.add(key=key, value=value)
    return model


def _w_bytes() -> bytes:
    return (np.arange(24, dtype=np.float32).reshape(4, 6) / 24).tobytes()


def test_valid_relative_external_data_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "w.bin").write_bytes(b"PAD!" + _w_bytes())
    path = _save(_external(_linear_model(), "weights/w.bin", _w_bytes(), offset=4), tmp_path / "m.onnx")
    model, _ = inspect_onnx(path)
    reference = generator_from_onnx(_linear_model())
    z = torch.randn(3, 4)
    assert torch.allclose(generator_from_onnx(model)(z), reference(z))


@pytest.mark.parametrize(
    ("location", "code"),
    [
        ("/etc/passwd", "onnx.external_data_absolute"),
        ("C:\\Windows\\win.ini", "onnx.external_data_absolute"),
        ("../secret.bin", "onnx.external_data_traversal"),
        ("weights/../../secret.bin", "onnx.external_data_traversal"),
        ("weights\\..\\..\\secret.bin", "onnx.external_data_traversal"),
    ],
)
def test_external_data_outside_the_upload_is_refused(tmp_path: Path, location: str, code: str) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    (tmp_path / "secret.bin").write_bytes(_w_bytes())
    path = _save(_external(_linear_model(), location, _w_bytes()), upload / "m.onnx")
    with pytest.raises(RejectedModelError) as info:
        inspect_onnx(path)
    assert [f.code for f in info.value.findings] == [code]


def test_symlink_escaping_the_upload_is_refused(tmp_path: Path) -> None:
    upload = tmp_path / "upload"
    upload.mkdir()
    (tmp_path / "secret.bin").write_bytes(_w_bytes())
    os.symlink(tmp_path / "secret.bin", upload / "w.bin")
    path = _save(_external(_linear_model(), "w.bin", _w_bytes()), upload / "m.onnx")
    with pytest.raises(RejectedModelError) as info:
        inspect_onnx(path)
    assert [f.code for f in info.value.findings] == ["onnx.external_data_escape"]


def test_short_or_missing_external_data_is_invalid(tmp_path: Path) -> None:
    (tmp_path / "w.bin").write_bytes(_w_bytes()[:10])
    with pytest.raises(InvalidModelError, match="too short"):
        inspect_onnx(_save(_external(_linear_model(), "w.bin", _w_bytes()), tmp_path / "m.onnx"))
    with pytest.raises(InvalidModelError, match="missing"):
        inspect_onnx(_save(_external(_linear_model(), "nope.bin", _w_bytes()), tmp_path / "m2.onnx"))


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.99])
def test_truncated_file_is_invalid(tmp_path: Path, keep: float) -> None:
    data = _linear_model().SerializeToString()
    path = tmp_path / "m.onnx"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InvalidModelError):
        inspect_onnx(path)


@pytest.mark.parametrize("payload", [b"", b"\x08" + os.urandom(200), b"not an onnx file at all", b"\xff" * 64])
def test_garbage_is_invalid(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "m.onnx"
    path.write_bytes(payload)
    with pytest.raises(InvalidModelError):
        inspect_onnx(path)


def test_giant_declared_tensors_are_refused_before_allocation(tmp_path: Path) -> None:
    model = _linear_model()
    huge = TensorProto(name="huge", data_type=TensorProto.FLOAT, dims=[1_000_000, 1_000_000])
    model.graph.initializer.append(huge)
    with pytest.raises(InvalidModelError, match="max_tensor_elements"):
        inspect_onnx(_save(model, tmp_path / "m.onnx"), max_tensor_elements=10_000_000)
    model = _linear_model()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 10**12
    with pytest.raises(InvalidModelError, match="declared shape"):
        inspect_onnx(_save(model, tmp_path / "m2.onnx"), max_tensor_elements=10_000_000)


def test_initializer_with_missing_bytes_is_invalid(tmp_path: Path) -> None:
    model = _linear_model()
    w = next(t for t in model.graph.initializer if t.name == "W")
    w.raw_data = w.raw_data[:-8]
    with pytest.raises(InvalidModelError, match="truncated or corrupt"):
        inspect_onnx(_save(model, tmp_path / "m.onnx"))


def test_file_over_the_size_limit_is_refused(tmp_path: Path) -> None:
    path = _save(_linear_model(), tmp_path / "m.onnx")
    with pytest.raises(InvalidModelError, match="max_bytes"):
        inspect_onnx(path, max_bytes=50)


def test_malformed_graph_is_invalid_not_a_crash(tmp_path: Path) -> None:
    model = _linear_model()
    model.graph.node[0].input[1] = "does_not_exist"
    with pytest.raises(InvalidModelError, match="malformed"):
        inspect_onnx(_save(model, tmp_path / "m.onnx"))


def test_mutated_files_never_crash(tmp_path: Path) -> None:
    """Random byte flips, cuts and splices of a valid model: every outcome is a model or a ScannerError."""
    from scanner.errors import ScannerError

    data = bytearray(_linear_model().SerializeToString())
    rng = np.random.default_rng(7)
    path = tmp_path / "m.onnx"
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(300):
        mutated = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            pos = int(rng.integers(0, len(mutated)))
            kind = rng.integers(0, 3)
            if kind == 0:
                mutated[pos] = int(rng.integers(0, 256))
            elif kind == 1:
                del mutated[pos : pos + int(rng.integers(1, 16))]
            else:
                mutated[pos:pos] = bytes(rng.integers(0, 256, size=int(rng.integers(1, 8)), dtype=np.uint8))
        path.write_bytes(bytes(mutated))
        try:
            model, _ = inspect_onnx(path, max_tensor_elements=1_000_000)
            generator = generator_from_onnx(model, max_tensor_elements=1_000_000)
            generator.generate(generator.sample_latent(3, seed=0))
            outcomes["loaded"] += 1
        except ScannerError:
            outcomes["refused"] += 1
    assert outcomes["refused"] > 0 and sum(outcomes.values()) == 300
