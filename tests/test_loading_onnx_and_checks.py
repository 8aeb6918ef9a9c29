"""Format detection from bytes, ONNX delegation, format.* checks on clean files, `dgmscan inspect`."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from scanner.architectures import build
from scanner.checks.base import ScanConfig, ScanContext
from scanner.errors import RejectedModelError
from scanner.formats import detect
from scanner.formats.detect import detect_format
from scanner.formats.safetensors_io import save_safetensors
from scanner.loading import inspect_file, load_generator

try:
    from tests.hostile_corpus import onnx_bytes, payload_builtins_open, small_state_dict, torch_zip_bytes
except ImportError:  # pragma: no cover
    from hostile_corpus import onnx_bytes, payload_builtins_open, small_state_dict, torch_zip_bytes


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_detection_uses_bytes_not_names(tmp_path: Path) -> None:
    save_safetensors(build("vae_mnist_decoder", {"hidden": 8}), tmp_path / "x.onnx")
    cases = {
        detect.SAFETENSORS: (tmp_path / "x.onnx").read_bytes(),
        detect.TORCH_ZIP: torch_zip_bytes(small_state_dict()),
        detect.ONNX: onnx_bytes(),
        detect.PICKLE: payload_builtins_open(tmp_path),
        detect.NPY: _npy(np.zeros(3)),
        detect.UNKNOWN: b"GIF89a....",
    }
    for expected, data in cases.items():
        assert detect_format(data) == expected, expected
    assert inspect_file(tmp_path / "x.onnx").format == detect.SAFETENSORS


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    from scanner.onnx import export_onnx

    torch.manual_seed(0)
    g = build("dcgan28", {"base": 8}).eval()
    path = tmp_path_factory.mktemp("onnx") / "g.model"
    export_onnx(g, path)
    return path, g


def test_onnx_is_delegated_and_loads(onnx_model: tuple[Path, torch.nn.Module]) -> None:
    path, g = onnx_model
    report = inspect_file(path)
    assert report.format == detect.ONNX and report.status == "ok", report.to_dict()
    loaded = load_generator(path)
    z = g.sample_latent(4, seed=3)
    with torch.no_grad():
        assert torch.allclose(g(z), loaded(z), atol=1e-5)
    assert loaded.output.final_activation == "tanh"


def test_onnx_external_data_outside_upload_is_rejected(tmp_path: Path) -> None:
    model = onnx.load_model_from_string(onnx_bytes())
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "/etc/passwd"
    (tmp_path / "ext.onnx").write_bytes(model.SerializeToString())
    report = inspect_file(tmp_path / "ext.onnx")
    assert report.status == "rejected", report.to_dict()
    with pytest.raises(RejectedModelError) as info:
        load_generator(tmp_path / "ext.onnx")
    assert info.value.findings


def _run_format_checks(path: Path | None, tmp_path: Path) -> dict[str, object]:
    from scanner.checks import load_all

    checks = load_all()
    ctx = ScanContext(generator=None, targets=[], config=ScanConfig(), artifacts_dir=tmp_path, model_path=path)
    return {n: checks[n]().run(ctx) for n in sorted(checks) if n.startswith("format.")}


def test_format_checks_on_clean_files(tmp_path: Path, onnx_model: tuple[Path, torch.nn.Module]) -> None:
    save_safetensors(build("vae_mnist_decoder", {"hidden": 8}), tmp_path / "v.safetensors")
    (tmp_path / "sd.pt").write_bytes(torch_zip_bytes(small_state_dict()))
    for path, applicable in (
        (tmp_path / "v.safetensors", "format.safetensors_header"),
        (tmp_path / "sd.pt", "format.pickle_scan"),
        (onnx_model[0], "format.onnx_safety"),
    ):
        results = _run_format_checks(path, tmp_path)
        assert set(results) == {
            "format.detection",
            "format.pickle_scan",
            "format.onnx_safety",
            "format.safetensors_header",
        }
        for name, result in results.items():
            assert result.status == "pass", (path.name, name, result.summary)
            assert result.summary.startswith("not applicable") == (name not in (applicable, "format.detection"))
    no_file = _run_format_checks(None, tmp_path)
    assert all(r.status == "pass" and "not applicable" in r.summary for r in no_file.values())


def _inspect_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from scanner.commands import inspect as inspect_command

    parser = argparse.ArgumentParser()
    inspect_command.add_arguments(parser)
    rc = inspect_command.run(parser.parse_args(argv))
    return rc, capsys.readouterr().out


def test_inspect_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_safetensors(build("vae_mnist_decoder", {"hidden": 8}), tmp_path / "v.safetensors")
    rc, out = _inspect_cli([str(tmp_path / "v.safetensors"), "--json"], capsys)
    info = json.loads(out)
    assert rc == 0 and info["architecture"] == "vae_mnist_decoder" and info["parameters"] > 0
    assert info["latent"]["shape"] == [20] and info["output"]["shape"] == [1, 28, 28]

    (tmp_path / "sd.pt").write_bytes(torch_zip_bytes(small_state_dict()))
    rc, out = _inspect_cli([str(tmp_path / "sd.pt")], capsys)
    assert rc == 2 and "name the architecture" in out
    rc, out = _inspect_cli(
        [str(tmp_path / "sd.pt"), "--architecture", "vae_mnist_decoder", "--architecture-config", '{"hidden": 8}'],
        capsys,
    )
    assert rc == 0 and "vae_mnist_decoder" in out and "parameters:" in out

    (tmp_path / "evil.safetensors").write_bytes(payload_builtins_open(tmp_path))
    rc, out = _inspect_cli([str(tmp_path / "evil.safetensors"), "--json"], capsys)
    info = json.loads(out)
    assert rc == 2 and info["status"] == "rejected" and info["format"] == "pickle"
    assert "dgmscan export" in info["advice"]
    assert any(f["code"] == "pickle.unsafe_global" for f in info["findings"])


def test_inspect_cache_follows_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    save_safetensors(build("vae_mnist_decoder", {"hidden": 8}), path)
    first = inspect_file(path)
    first.findings.append("caller mutation")  # type: ignore[arg-type]
    assert inspect_file(path).findings == []  # callers get copies
    path.write_bytes(payload_builtins_open(tmp_path))  # replaced in place: different size and mtime
    assert inspect_file(path).status == "rejected"
