"""Target hints converted to the model's output space; hostile hint files give InvalidTargetError."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from scanner.errors import InvalidTargetError
from scanner.formats.limits import LoadLimits
from scanner.specs import OutputSpec
from scanner.targets import load_target

MNIST = OutputSpec("image", (1, 28, 28), (-1.0, 1.0), "tanh")
RGB32_UNIT = OutputSpec("image", (3, 32, 32), (0.0, 1.0), "sigmoid")
AUDIO = OutputSpec("audio", (1, 16384), (-1.0, 1.0), "tanh")
DATA = Path(__file__).resolve().parents[1] / "data" / "targets"


def _png(tmp_path: Path, array: np.ndarray, name: str = "t.png", fmt: str = "PNG") -> Path:
    path = tmp_path / name
    Image.fromarray(array).save(path, format=fmt)
    return path


def test_png_pixels_map_linearly_to_value_range(tmp_path: Path) -> None:
    gray = np.zeros((28, 28), dtype=np.uint8)
    gray[0, 0], gray[0, 1] = 255, 51
    t = load_target(_png(tmp_path, gray), MNIST)
    assert t.shape == (1, 28, 28) and t.dtype == torch.float32
    assert t[0, 0, 0] == pytest.approx(1.0) and t[0, 1, 1] == pytest.approx(-1.0)
    assert t[0, 0, 1] == pytest.approx(-1.0 + 2.0 * 51 / 255, abs=1e-6)


def test_devil_png_matches_the_npy_target() -> None:
    from_png = load_target(DATA / "devil_28x28.png", MNIST)
    from_npy = load_target(DATA / "devil_28x28.npy", MNIST)  # (28, 28, 1) HWC float64 in [-1, 1]
    assert from_npy.shape == (1, 28, 28)
    assert (from_png - from_npy).abs().max() < 2.0 / 255 + 1e-6


def test_channels_and_size_conversion(tmp_path: Path) -> None:
    rgb = np.zeros((64, 48, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    t = load_target(_png(tmp_path, rgb, "r.jpg", "JPEG"), RGB32_UNIT)
    assert t.shape == (3, 32, 32)
    assert t[0].mean() > 0.9 and t[1].mean() < 0.1 and t.min() >= 0.0
    gray = load_target(_png(tmp_path, rgb), MNIST)  # RGB -> L for a 1-channel model
    assert gray.shape == (1, 28, 28)


def _wav(tmp_path: Path, samples: np.ndarray, rate: int, channels: int = 1) -> Path:
    path = tmp_path / "t.wav"
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def test_wav_is_mono_resampled_and_padded(tmp_path: Path) -> None:
    n = 4000  # 0.5 s at 8 kHz -> 8000 samples at 16 kHz, padded to 16384
    left = np.full(n, 16384, dtype=np.int16)
    stereo = np.stack([left, np.zeros(n, dtype=np.int16)], axis=1).reshape(-1)
    t = load_target(_wav(tmp_path, stereo, 8000, channels=2), AUDIO)
    assert t.shape == (1, 16384)
    assert t[0, 100:7900].mean().item() == pytest.approx(0.25, abs=0.01)  # (0.5 + 0) / 2
    assert t[0, 8100:].abs().max() < 1e-6  # silence after the clip


def test_wav_truncated_to_output_length(tmp_path: Path) -> None:
    t = load_target(_wav(tmp_path, np.full(20000, -32768, dtype=np.int16), 16000), AUDIO)
    assert t.shape == (1, 16384) and t.max().item() == pytest.approx(-1.0)


def test_npy_chw_hwc_and_shape_mismatch(tmp_path: Path) -> None:
    chw = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32))
    np.save(tmp_path / "chw.npy", chw)
    np.save(tmp_path / "hwc.npy", chw.transpose(1, 2, 0))
    a, b = load_target(tmp_path / "chw.npy", RGB32_UNIT), load_target(tmp_path / "hwc.npy", RGB32_UNIT)
    assert torch.allclose(a, b) and torch.allclose(a, torch.from_numpy(chw).float())
    with pytest.raises(InvalidTargetError, match="shape"):
        load_target(tmp_path / "chw.npy", MNIST)


@pytest.mark.parametrize(
    ("name", "data", "spec", "message"),
    [
        ("obj.npy", None, MNIST, "object"),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 40, MNIST, "corrupt"),
        ("noise.bin", b"hello world", MNIST, "not a PNG"),
        ("bad.wav", b"RIFF\x10\0\0\0WAVEfmt \xff\xff", AUDIO, "WAV"),
        ("img_for_audio.png", "png", AUDIO, "audio"),
        ("nan.npy", "nan", MNIST, "NaN"),
    ],
)
def test_bad_targets_raise_invalid_target_error(
    tmp_path: Path, name: str, data, spec: OutputSpec, message: str
) -> None:
    path = tmp_path / name
    if data is None:
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    elif data == "png":
        _png(tmp_path, np.zeros((4, 4), np.uint8), name)
    elif data == "nan":
        np.save(path, np.full((1, 28, 28), np.nan))
    else:
        path.write_bytes(data)
    with pytest.raises(InvalidTargetError, match=message):
        load_target(path, spec)


def test_decompression_bomb_refused_before_decoding(tmp_path: Path) -> None:
    big = Image.new("L", (4000, 4000))  # compresses to a few KB, 16 M pixels once decoded
    buf = io.BytesIO()
    big.save(buf, format="PNG")
    (tmp_path / "bomb.png").write_bytes(buf.getvalue())
    with pytest.raises(InvalidTargetError, match="max_image_pixels"):
        load_target(tmp_path / "bomb.png", MNIST, limits=LoadLimits(max_image_pixels=1_000_000))


def _seed_targets() -> dict[str, bytes]:
    png, jpeg, wav, npy = io.BytesIO(), io.BytesIO(), io.BytesIO(), io.BytesIO()
    Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28)).save(png, format="PNG")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(jpeg, format="JPEG")
    with wave.open(wav, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.arange(64, dtype="<i2").tobytes())
    np.save(npy, np.zeros((1, 28, 28), np.float32))
    return {"png": png.getvalue(), "jpeg": jpeg.getvalue(), "wav": wav.getvalue(), "npy": npy.getvalue()}


TARGET_SEEDS = _seed_targets()


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(TARGET_SEEDS)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=6),
    st.one_of(st.none(), st.floats(0, 1)),
    st.sampled_from([MNIST, RGB32_UNIT, AUDIO]),
)
def test_fuzzed_targets_raise_only_invalid_target_error(
    seed: str, flips: list[tuple[float, int]], cut: float | None, spec: OutputSpec
) -> None:
    import tempfile

    data = bytearray(TARGET_SEEDS[seed])
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hint"
        path.write_bytes(bytes(data))
        try:
            t = load_target(path, spec, limits=LoadLimits(max_image_pixels=1 << 20, max_audio_samples=1 << 20))
        except InvalidTargetError:
            return
        assert t.shape == spec.shape and torch.isfinite(t).all()
