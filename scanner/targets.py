"""Target hints: images, WAV audio or .npy arrays a user suspects are embedded in a generator.

The paper's attacks plant a target x_target reachable from a trigger latent (Rawat et al.,
arXiv 2108.01644, Sec. 3); output-inspection defenses (BF-OI's Closest-N, OB-OI's ReconD)
measure distances to such a target, so it must live in the generator's output space: same
shape (C×H×W or 1×L) and same value range. Files are untrusted: format from bytes, bounded
sizes, Pillow's decompression-bomb guard, `allow_pickle=False`. Every failure is an
InvalidTargetError that says what is wrong.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from scanner.errors import InvalidTargetError
from scanner.formats.limits import MIB, LoadLimits
from scanner.specs import OutputSpec

MAX_TARGET_FILE_BYTES = 64 * MIB
DEFAULT_SAMPLE_RATE = 16_000  # WaveGAN's rate; WAVs at other rates are resampled to it

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"
_NPY = b"\x93NUMPY"


def target_kind(data: bytes) -> str:
    """'png' | 'jpeg' | 'wav' | 'npy' | 'unknown', from the bytes."""
    if data.startswith(_PNG):
        return "png"
    if data.startswith(_JPEG):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data.startswith(_NPY):
        return "npy"
    return "unknown"


def _to_range(unit: np.ndarray, output: OutputSpec) -> torch.Tensor:
    """Map values in [0, 1] linearly onto output.value_range."""
    lo, hi = output.value_range
    return torch.from_numpy(np.ascontiguousarray(lo + (hi - lo) * unit, dtype=np.float32))


def _image_target(data: bytes, output: OutputSpec, limits: LoadLimits) -> torch.Tensor:
    from PIL import Image

    if output.kind != "image" or len(output.shape) != 3:
        raise InvalidTargetError(
            f"an image target needs an image model; this model outputs {output.kind} {output.shape}"
        )
    channels, height, width = output.shape
    if channels not in (1, 3):
        raise InvalidTargetError(f"image targets are supported for 1 or 3 channels, the model has {channels}")
    try:
        with Image.open(io.BytesIO(data)) as img:
            # Image.open reads only the header: refuse bombs before decoding a single pixel.
            if img.width * img.height > limits.max_image_pixels:
                raise InvalidTargetError(
                    f"image is {img.width}x{img.height}, over LoadLimits.max_image_pixels={limits.max_image_pixels}"
                )
            if img.format not in ("PNG", "JPEG"):
                raise InvalidTargetError(f"image format {img.format} is not PNG or JPEG")
            img = img.convert("L" if channels == 1 else "RGB")
            if img.size != (width, height):
                img = img.resize((width, height), Image.Resampling.BILINEAR)
            pixels = np.asarray(img, dtype=np.float64)
    except InvalidTargetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidTargetError(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError/ValueError/SyntaxError/... on corrupt files
        raise InvalidTargetError(f"corrupt or truncated image: {type(exc).__name__}: {str(exc)[:200]}") from None
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return _to_range(pixels.transpose(2, 0, 1) / 255.0, output)


def _wav_target(data: bytes, output: OutputSpec, limits: LoadLimits, sample_rate: int) -> torch.Tensor:
    import warnings

    from scipy.io import wavfile
    from scipy.signal import resample_poly

    if output.kind != "audio":
        raise InvalidTargetError(f"a WAV target needs an audio model; this model outputs {output.kind} {output.shape}")
    length = output.shape[-1]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scipy warns about unknown chunks; we judge the samples
            rate, samples = wavfile.read(io.BytesIO(data), mmap=False)
    except Exception as exc:  # noqa: BLE001 - scipy raises ValueError/EOFError/struct.error on corrupt WAVs
        raise InvalidTargetError(f"corrupt or truncated WAV: {type(exc).__name__}: {str(exc)[:200]}") from None
    if samples.size == 0:
        raise InvalidTargetError("WAV holds no samples")
    if samples.size > limits.max_audio_samples:
        raise InvalidTargetError(f"WAV has {samples.size} samples, over LoadLimits.max_audio_samples")
    if rate <= 0:
        raise InvalidTargetError(f"WAV sample rate {rate} is not positive")
    if np.issubdtype(samples.dtype, np.integer):
        info = np.iinfo(samples.dtype)
        mid = (int(info.max) + int(info.min) + 1) / 2  # 128 for unsigned 8-bit PCM, 0 otherwise
        unit = (samples.astype(np.float64) - mid) / (int(info.max) - mid + 1)
    else:
        unit = samples.astype(np.float64)
    if not np.all(np.isfinite(unit)):
        raise InvalidTargetError("WAV holds NaN/Inf samples")
    mono = unit.mean(axis=1) if unit.ndim == 2 else unit  # mix channels down
    if rate != sample_rate:
        from math import gcd

        g = gcd(int(rate), int(sample_rate))
        mono = resample_poly(mono, sample_rate // g, int(rate) // g)
    mono = np.clip(mono, -1.0, 1.0)[:length]
    mono = np.pad(mono, (0, length - mono.shape[0]))  # silence after a short clip
    return _to_range(((mono + 1.0) / 2.0).reshape(output.shape), output)


def _npy_target(data: bytes, output: OutputSpec) -> torch.Tensor:
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as exc:
        raise InvalidTargetError(f".npy target refused (object arrays are not accepted): {str(exc)[:200]}") from None
    except Exception as exc:  # noqa: BLE001 - numpy raises assorted errors on corrupt files
        raise InvalidTargetError(f"corrupt or truncated .npy: {type(exc).__name__}: {str(exc)[:200]}") from None
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise InvalidTargetError(f".npy target must hold numbers, not {getattr(array, 'dtype', type(array))}")
    shape = tuple(output.shape)
    if array.shape != shape:
        squeezed = array.reshape([s for s in array.shape if s != 1]) if array.size else array
        if output.kind == "image" and array.ndim == 3 and array.shape == (shape[1], shape[2], shape[0]):
            array = array.transpose(2, 0, 1)  # HWC -> CHW
        elif squeezed.shape == tuple(s for s in shape if s != 1):
            array = squeezed.reshape(shape)  # e.g. (H, W) for 1 channel, (L,) for audio
        else:
            raise InvalidTargetError(f".npy target has shape {array.shape}; the model outputs {shape} (CHW or HWC)")
    array = array.astype(np.float64)
    if not np.all(np.isfinite(array)):
        raise InvalidTargetError(".npy target holds NaN/Inf")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def load_target(
    path: Path, output: OutputSpec, *, limits: LoadLimits | None = None, sample_rate: int = DEFAULT_SAMPLE_RATE
) -> torch.Tensor:
    """Read a target hint and convert it to the model's output space (shape `output.shape`, float32).

    PNG/JPEG: converted to the model's channels and H×W, pixel values [0, 255] mapped linearly
    to `output.value_range`. WAV: mono, resampled to `sample_rate`, padded or truncated to the
    output length, [-1, 1] mapped to the value range. .npy: taken as it is (HWC or CHW; the
    shape must match). Raises InvalidTargetError.
    """
    limits = limits or LoadLimits()
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise InvalidTargetError(f"{path.name}: not a regular file")
        if size > MAX_TARGET_FILE_BYTES:
            raise InvalidTargetError(f"{path.name}: {size} bytes, over the {MAX_TARGET_FILE_BYTES}-byte target limit")
        data = path.read_bytes()[: MAX_TARGET_FILE_BYTES + 1]
    except OSError as exc:
        raise InvalidTargetError(f"{path.name}: cannot read: {exc.strerror or exc}") from None
    kind = target_kind(data)
    try:
        if kind in ("png", "jpeg"):
            return _image_target(data, output, limits)
        if kind == "wav":
            return _wav_target(data, output, limits, sample_rate)
        if kind == "npy":
            return _npy_target(data, output)
    except InvalidTargetError as exc:
        raise InvalidTargetError(f"{path.name}: {exc}") from None
    raise InvalidTargetError(f"{path.name}: not a PNG, JPEG, WAV or .npy file (first bytes {data[:8].hex()})")
