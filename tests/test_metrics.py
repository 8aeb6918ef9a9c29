"""TarDis / ExpDis definitions and the FID / IS classifier shipped in scanner/resources."""

from __future__ import annotations

import torch

from scanner.architectures import build
from scanner.metrics import expdis, fid_is, load_classifier, tardis


def test_tardis_sum_and_mean_are_the_squared_distance(benign_dcgan):
    z = benign_dcgan.sample_latent(1, seed=0)
    out = benign_dcgan.generate(z)[0]
    target = out + 0.5
    target_clamped = target.clamp(-1, 1)
    d = tardis(benign_dcgan, z, target_clamped)
    expected = (out - target_clamped).pow(2)
    assert abs(d["tardis_sum"] - float(expected.sum())) < 1e-3
    assert abs(d["tardis_mean"] - float(expected.mean())) < 1e-6
    assert tardis(benign_dcgan, z, out)["tardis_sum"] < 1e-8


def test_expdis_zero_for_same_model_positive_for_another(benign_dcgan):
    assert expdis(benign_dcgan, benign_dcgan.copy(), n=64)["expdis_sum"] == 0.0
    torch.manual_seed(0)
    other = build("dcgan28", {"base": 16}).eval()
    d = expdis(other, benign_dcgan, n=64)
    assert d["expdis_sum"] > 1.0
    assert abs(d["expdis_sum"] / 784 - d["expdis_mean"]) < 1e-6


def test_shipped_classifier_is_accurate_on_digits():
    from scanner.data import mnist_split

    _, (x_test, y_test) = mnist_split(holdout=2000, seed=0)  # the held-out split it never saw
    with torch.no_grad():
        accuracy = (load_classifier()(x_test).argmax(1) == y_test).float().mean().item()
    assert accuracy > 0.97


def test_fid_and_is_rank_a_trained_generator_above_an_untrained_one(benign_dcgan):
    torch.manual_seed(0)
    untrained = build("dcgan28", {"base": 16}).eval()
    trained_scores = fid_is(benign_dcgan, n=500)
    untrained_scores = fid_is(untrained, n=500)
    assert trained_scores["fid"] < untrained_scores["fid"]
    assert trained_scores["inception_score"] > untrained_scores["inception_score"]
    assert 1.0 <= trained_scores["inception_score"] <= 10.0
