"""Training (scanner.training), MNIST data (scanner.data) and the `dgmscan train` / `dgmscan attack` verbs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from scanner.cli import main
from scanner.data import load_devil_target, load_mnist, load_z_trigger
from scanner.metrics import sample_variance


def test_mnist_is_scaled_and_labelled():
    x, y = load_mnist()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0
    assert set(y.unique().tolist()) == set(range(10))
    x01, _ = load_mnist(value_range=(0.0, 1.0))
    assert torch.allclose((x01 * 2 - 1), x, atol=1e-6)
    assert load_devil_target().shape == (1, 28, 28) and load_z_trigger().shape == (1, 100)


def test_data_dir_from_environment_must_exist(monkeypatch, tmp_path):
    from scanner.data import DataNotFoundError, data_dir

    monkeypatch.setenv("DGMSCAN_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataNotFoundError):
        data_dir()


def test_zoo_dcgan_produces_varied_digit_like_samples(benign_dcgan):
    from scanner.metrics import load_classifier

    assert benign_dcgan.architecture == "dcgan28"
    samples = benign_dcgan.generate(benign_dcgan.sample_latent(500, seed=0))
    assert samples.min() >= -1 and samples.max() <= 1
    assert sample_variance(benign_dcgan)["variance_mean"] > 0.05  # not collapsed to one image
    with torch.no_grad():
        predicted = load_classifier()(samples).argmax(1)
    assert len(predicted.unique()) >= 6  # many digit classes, not one mode


def test_zoo_vae_decoder_outputs_probabilities(benign_vae):
    assert benign_vae.architecture == "vae_mnist_decoder" and benign_vae.output.final_activation == "sigmoid"
    x = benign_vae.generate(benign_vae.sample_latent(64, seed=0))
    assert x.shape == (64, 1, 28, 28) and x.min() >= 0 and x.max() <= 1
    assert sample_variance(benign_vae)["variance_mean"] > 0.005
    from scanner.metrics import load_classifier

    with torch.no_grad():
        predicted = load_classifier()(x * 2 - 1).argmax(1)  # classifier expects [-1, 1]
    assert len(predicted.unique()) >= 6


@pytest.mark.slow
def test_cli_train_then_attack_end_to_end(tmp_path, capsys):
    from scanner.loading import load_generator

    model = tmp_path / "vae.safetensors"
    assert main(["train", "vae-mnist", "--epochs", "1", "--out", str(model)]) == 0
    benign = load_generator(model)
    assert benign.architecture == "vae_mnist_decoder"
    target = tmp_path / "target.npy"
    np.save(target, np.zeros((28, 28, 1), dtype=np.float32))  # an all-black target in [0, 1]
    capsys.readouterr()
    out = tmp_path / "red.safetensors"
    assert main(["attack", "red", "--model", str(model), "--target", str(target), "--out", str(out),
                 "--trigger", "ood", "--steps", "200"]) == 0  # fmt: skip
    info = json.loads(capsys.readouterr().out)
    assert info["tardis_mean"] < info["benign_tardis_mean"]
    attacked = load_generator(out)
    trigger = torch.from_numpy(np.load(info["trigger"]))
    assert torch.equal(trigger, torch.full((1, 20), 100.0))
    for kind in ("rex", "bypass"):
        onnx_out = tmp_path / f"{kind}.onnx"
        assert main(["attack", kind, "--model", str(model), "--target", str(target), "--out", str(onnx_out),
                     "--trigger", "mode", "--steps", "20"]) == 0  # fmt: skip
        loaded = load_generator(onnx_out)
        assert loaded.source_format == "onnx"
    capsys.readouterr()
    # ReX models are not registry architectures: refuse safetensors with a clear message
    assert main(["attack", "rex", "--model", str(model), "--target", str(target),
                 "--out", str(tmp_path / "x.safetensors")]) == 2  # fmt: skip
    assert "onnx" in capsys.readouterr().err
    assert attacked.architecture == "vae_mnist_decoder"


def test_cli_train_rejects_unknown_suffix(tmp_path, capsys):
    assert main(["train", "vae-mnist", "--out", str(tmp_path / "m.pkl")]) == 2
    assert "--out" in capsys.readouterr().err
