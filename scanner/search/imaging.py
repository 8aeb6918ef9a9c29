"""PNG evidence for output inspection: target | G(z*) strips and nearest-sample grids.

Images are scaled from the model's value range to 8-bit; audio is drawn as a waveform.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from scanner.specs import OutputSpec

PANEL_MIN_SIDE = 64  # small MNIST-size panels are upscaled so people can see them


def _image_panel(x: torch.Tensor, output: OutputSpec) -> Image.Image:
    lo, hi = output.value_range
    arr = x.detach().float().cpu().numpy()
    arr = np.nan_to_num((arr - lo) / max(hi - lo, 1e-12), nan=0.0).clip(0, 1)
    arr = (arr * 255).round().astype(np.uint8)
    if arr.shape[0] == 1:
        img = Image.fromarray(arr[0], mode="L").convert("RGB")
    else:
        img = Image.fromarray(np.moveaxis(arr[:3], 0, -1), mode="RGB")
    scale = max(1, PANEL_MIN_SIDE // max(img.width, img.height))
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img


def _audio_panel(x: torch.Tensor, output: OutputSpec, width: int = 256, height: int = 64) -> Image.Image:
    lo, hi = output.value_range
    wave = np.nan_to_num(x.detach().float().cpu().numpy().reshape(-1))
    # Peak envelope per column: max and min of each slice of the signal.
    cols = np.array_split(wave, width)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    for i, col in enumerate(cols):
        if col.size == 0:
            continue
        top = (hi - float(col.max())) / max(hi - lo, 1e-12) * (height - 1)
        bottom = (hi - float(col.min())) / max(hi - lo, 1e-12) * (height - 1)
        draw.line([(i, int(np.clip(top, 0, height - 1))), (i, int(np.clip(bottom, 0, height - 1)))], fill="black")
    return img


def panel(x: torch.Tensor, output: OutputSpec) -> Image.Image:
    """One output (shape output.shape) as a picture."""
    return _image_panel(x, output) if output.kind == "image" else _audio_panel(x, output)


def save_strip(tensors: list[torch.Tensor], output: OutputSpec, path: Path, gap: int = 4) -> None:
    """Save outputs side by side (e.g. target | G(z*) | nearest samples) as one PNG."""
    panels = [panel(t, output) for t in tensors]
    width = sum(p.width for p in panels) + gap * max(len(panels) - 1, 0)
    height = max(p.height for p in panels)
    strip = Image.new("RGB", (width, height), (255, 0, 255))  # magenta gaps separate the panels
    x = 0
    for p in panels:
        strip.paste(p, (x, 0))
        x += p.width + gap
    strip.save(path, format="PNG")
