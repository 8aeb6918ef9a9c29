"""Small PNG writers for check evidence (Pillow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def save_gray_png(pixels: np.ndarray, path: Path) -> Path:
    """Write a 2-D uint8 array as an 8-bit grayscale PNG."""
    arr = np.ascontiguousarray(np.asarray(pixels, dtype=np.uint8))
    if arr.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {arr.shape}")
    Image.fromarray(arr, mode="L").save(path, format="PNG")
    return path
