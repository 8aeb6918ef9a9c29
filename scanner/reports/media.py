"""Turning generator outputs into files people can look at: PNG for images, WAV for audio."""

from __future__ import annotations

import io
import wave
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from scanner.specs import OutputSpec

# Small images (28x28 MNIST) are upscaled so they are visible in a report.
MIN_DISPLAY_SIDE = 112
AUDIO_SAMPLE_RATE = 16000  # WaveGAN's rate; only used to label the WAV file


def _to_unit_range(x: np.ndarray, value_range: tuple[float, float]) -> np.ndarray:
    low, high = value_range
    scale = (high - low) or 1.0
    return np.clip((np.nan_to_num(x, nan=low, posinf=high, neginf=low) - low) / scale, 0.0, 1.0)


def image_png_bytes(x: torch.Tensor | np.ndarray, output: OutputSpec) -> bytes:
    """A C×H×W output (values in ``output.value_range``) as PNG bytes, upscaled with nearest neighbours."""
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    arr = arr.reshape(output.shape)
    unit = _to_unit_range(arr, output.value_range)
    pixels = (unit * 255.0 + 0.5).astype(np.uint8)
    channels = pixels.shape[0]
    if channels == 1:
        img = Image.fromarray(pixels[0], mode="L")
    elif channels == 3:
        img = Image.fromarray(np.moveaxis(pixels, 0, -1), mode="RGB")
    else:  # unusual channel counts: show the first channel
        img = Image.fromarray(pixels[0], mode="L")
    side = min(img.size)
    if side < MIN_DISPLAY_SIDE:
        factor = -(-MIN_DISPLAY_SIDE // side)
        img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def audio_wav_bytes(x: torch.Tensor | np.ndarray, output: OutputSpec) -> bytes:
    """A 1×L output as 16-bit mono WAV bytes (values mapped from ``output.value_range`` to [-1, 1])."""
    arr = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    unit = _to_unit_range(arr.reshape(-1), output.value_range) * 2.0 - 1.0
    pcm = (unit * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(AUDIO_SAMPLE_RATE)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def write_output_media(x: torch.Tensor | np.ndarray, output: OutputSpec, path_without_suffix: Path) -> tuple[Path, str]:
    """Write an output as PNG (image) or WAV (audio); returns the path written and its media type."""
    if output.kind == "audio":
        path, data, media_type = path_without_suffix.with_suffix(".wav"), audio_wav_bytes(x, output), "audio/wav"
    else:
        path, data, media_type = path_without_suffix.with_suffix(".png"), image_png_bytes(x, output), "image/png"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path, media_type
