"""Size limits applied to every untrusted file before and while it is read.

An upload is hostile until proven otherwise: a 20-byte safetensors header can declare a
terabyte tensor, a 40 KB zip can inflate to gigabytes, a pickle can loop on memo references.
Every reader in scanner.formats takes a `LoadLimits` and refuses work past it with an
InvalidModelError that names the limit, so the owner knows which knob to turn.
"""

from __future__ import annotations

from dataclasses import dataclass

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB


@dataclass(frozen=True)
class LoadLimits:
    """Upper bounds for reading one model file (safe defaults for the generators dgmscan scans)."""

    max_file_bytes: int = 2 * GIB  # the whole upload
    max_tensor_elements: int = 256 * 1024 * 1024  # one tensor (1 GiB of float32)
    max_total_elements: int = 512 * 1024 * 1024  # all tensors of a model together
    max_header_bytes: int = 16 * MIB  # safetensors JSON header (the format itself allows 100 MB)
    max_zip_members: int = 10_000
    max_decompressed_bytes: int = 4 * GIB  # sum of all zip members' uncompressed sizes
    max_member_bytes: int = 2 * GIB  # one zip member, uncompressed
    max_compression_ratio: float = 200.0  # per member, for members over 1 MiB (zip bombs)
    max_pickle_bytes: int = 64 * MIB  # a pickle we scan (state-dict pickles are a few KB)
    max_pickle_opcodes: int = 1_000_000
    max_nesting_depth: int = 3  # archives inside archives (.pt2 ships a torch zip inside)
    max_image_pixels: int = 64 * 1024 * 1024  # target hints (Pillow's decompression-bomb guard)
    max_audio_samples: int = 16 * 1024 * 1024

    def __post_init__(self) -> None:
        for name, value in self.__dict__.items():
            if value <= 0:
                raise ValueError(f"LoadLimits.{name} must be positive, got {value!r}")


DEFAULT_LIMITS = LoadLimits()
