"""safetensors and torch state-dict zips: valid round trips, strict shapes, lying headers named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch

from scanner.architectures import REGISTRY, build
from scanner.errors import InvalidModelError
from scanner.formats.limits import LoadLimits
from scanner.formats.safetensors_io import parse_header, save_safetensors
from scanner.loading import inspect_file, load_generator
from scanner.specs import LatentSpec, OutputSpec

SMALL_CONFIGS = {
    "dcgan28": {"base": 8},
    "dcgan32": {"base": 8},
    "vae_mnist_decoder": {"hidden": 32},
    "wavegan": {"d": 2},
    "stylegan_small": {"width": 8, "w_dim": 16, "latent_dim": 16},
}


def _trained_like(name: str, config: dict) -> torch.nn.Module:
    torch.manual_seed(0)
    g = build(name, config)
    # non-default BatchNorm statistics, so a round trip that dropped buffers would show
    for m in g.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return g.eval()


def test_every_registry_architecture_is_covered() -> None:
    assert set(SMALL_CONFIGS) == set(REGISTRY)


@pytest.mark.parametrize("name", sorted(SMALL_CONFIGS))
def test_save_safetensors_round_trip_gives_equal_outputs(name: str, tmp_path: Path) -> None:
    g = _trained_like(name, SMALL_CONFIGS[name])
    path = tmp_path / f"{name}.bin"  # extension deliberately uninformative
    save_safetensors(g, path)
    loaded = load_generator(path)
    z = g.sample_latent(5, seed=1)
    assert torch.equal(g(z), loaded(z))
    assert loaded.architecture == name and loaded.source_format == "safetensors"
    assert loaded.latent == g.latent and loaded.output == g.output
    assert not loaded.training
    report = inspect_file(path)
    assert report.status == "ok" and report.header["architecture"]["name"] == name


def test_default_size_dcgan28_round_trip(tmp_path: Path) -> None:
    g = _trained_like("dcgan28", {})
    save_safetensors(g, tmp_path / "g.safetensors")
    z = g.sample_latent(3, seed=0)
    assert torch.equal(g(z), load_generator(tmp_path / "g.safetensors")(z))


def test_metadata_specs_and_explicit_overrides(tmp_path: Path) -> None:
    g = build("vae_mnist_decoder", {"hidden": 16})
    g.latent = LatentSpec((20,), "uniform", -2.0, 2.0)
    save_safetensors(g, tmp_path / "v.safetensors")
    assert load_generator(tmp_path / "v.safetensors").latent.distribution == "uniform"
    out = OutputSpec("image", (1, 28, 28), (0.0, 255.0), "sigmoid")
    loaded = load_generator(tmp_path / "v.safetensors", output=out, latent=LatentSpec((20,)))
    assert loaded.output == out and loaded.latent.distribution == "normal"
    with pytest.raises(InvalidModelError, match="output shape"):
        load_generator(tmp_path / "v.safetensors", output=OutputSpec("image", (3, 28, 28)))


def test_torch_state_dict_zip_loads_with_architecture(tmp_path: Path) -> None:
    g = _trained_like("dcgan28", {"base": 8})
    torch.save(g.body.state_dict(), tmp_path / "sd.pt")
    torch.save(g.state_dict(), tmp_path / "gen_sd.pth")  # "body." prefix
    torch.save({"epoch": 3, "state_dict": g.body.state_dict()}, tmp_path / "ckpt.ckpt")
    z = g.sample_latent(4, seed=2)
    for name in ("sd.pt", "gen_sd.pth", "ckpt.ckpt"):
        loaded = load_generator(tmp_path / name, architecture="dcgan28", architecture_config={"base": 8})
        assert torch.equal(g(z), loaded(z)), name
        assert loaded.source_format == "torch_state_dict"
    with pytest.raises(InvalidModelError, match="name the architecture"):
        load_generator(tmp_path / "sd.pt")


def test_strict_shape_check_names_the_mismatch(tmp_path: Path) -> None:
    save_safetensors(build("dcgan28", {"base": 8}), tmp_path / "g.safetensors")
    with pytest.raises(InvalidModelError, match="shape mismatch"):
        load_generator(tmp_path / "g.safetensors", architecture="dcgan28", architecture_config={"base": 16})
    state = build("vae_mnist_decoder", {"hidden": 8}).body.state_dict()
    state.pop("2.bias")
    torch.save(state, tmp_path / "missing.pt")
    with pytest.raises(InvalidModelError, match=r"missing \['2.bias'\]"):
        load_generator(tmp_path / "missing.pt", architecture="vae_mnist_decoder", architecture_config={"hidden": 8})


def test_save_refuses_non_registry_weights(tmp_path: Path) -> None:
    g = build("vae_mnist_decoder", {"hidden": 8})
    g.metadata["architecture_config"] = {"hidden": 9}  # lies about its own config
    with pytest.raises(ValueError, match="do not match"):
        save_safetensors(g, tmp_path / "x.safetensors")


def _st(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize(
    ("header", "payload", "message"),
    [
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 8, None),
        ({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8, "needs 12 bytes"),
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 8]}}, b"\0" * 8, "non-negative"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 0]}}, b"\0" * 8, "begin <= end"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}, b"\0" * 8, "exactly"),
        ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 12, "trailing"),
        ({"__metadata__": {"k": 1}}, b"", "strings to strings"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, b"\0" * 4, "non-negative ints"),
    ],
)
def test_header_validation(header: dict, payload: bytes, message: str | None) -> None:
    data = _st(header, payload)
    if message is None:
        assert parse_header(data).tensors["a"].shape == (2,)
    else:
        with pytest.raises(InvalidModelError, match=message):
            parse_header(data)


def test_limits_are_configurable(tmp_path: Path) -> None:
    save_safetensors(build("vae_mnist_decoder", {"hidden": 8}), tmp_path / "v.safetensors")
    with pytest.raises(InvalidModelError, match="max_file_bytes"):
        load_generator(tmp_path / "v.safetensors", limits=LoadLimits(max_file_bytes=1000))
    with pytest.raises(InvalidModelError, match="max_tensor_elements"):
        load_generator(tmp_path / "v.safetensors", limits=LoadLimits(max_tensor_elements=1000))
    with pytest.raises(ValueError):
        LoadLimits(max_zip_members=0)
