"""Fuzz load_generator / inspect_file with random and mutated bytes: only our error types escape."""

from __future__ import annotations

import contextlib
import io
import os
import struct
import tempfile
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scanner.errors import ScannerError
from scanner.formats.limits import LoadLimits
from scanner.generator import Generator
from scanner.loading import inspect_file, load_generator

try:
    from tests.hostile_corpus import onnx_bytes, small_state_dict, torch_zip_bytes, valid_safetensors_bytes
except ImportError:  # pragma: no cover
    from hostile_corpus import onnx_bytes, small_state_dict, torch_zip_bytes, valid_safetensors_bytes

# Small limits keep every example fast; behaviour at the limits is part of what is fuzzed.
LIMITS = LoadLimits(max_file_bytes=1 << 20, max_pickle_opcodes=20_000, max_zip_members=64)
FUZZ = settings(
    # CI runs a fixed, derandomized 120 per test; DGMSCAN_FUZZ_EXAMPLES / DGMSCAN_FUZZ_RANDOM explore more.
    max_examples=int(os.environ.get("DGMSCAN_FUZZ_EXAMPLES", "120")),
    deadline=None,
    derandomize=os.environ.get("DGMSCAN_FUZZ_RANDOM") is None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(12, dtype=np.float32).reshape(3, 4))
    return buf.getvalue()


SEEDS: dict[str, bytes] = {
    "safetensors": valid_safetensors_bytes(),
    "torch_zip": torch_zip_bytes(small_state_dict()),
    "onnx": onnx_bytes(),
    "npy": _npy(),
    "pickle": b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s.",
}
MAGICS = [b"PK\x03\x04", b"\x80\x04", b"\x80\x02", b"\x93NUMPY\x01\x00", b"\x08\x07\x12", struct.pack("<Q", 40) + b"{"]


def _exercise(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "upload.bin"
        path.write_bytes(data)
        with contextlib.suppress(ScannerError):
            inspect_file(path, LIMITS)
        for architecture in (None, "vae_mnist_decoder"):
            try:
                generator = load_generator(
                    path,
                    architecture=architecture,
                    architecture_config={"hidden": 8} if architecture else None,
                    limits=LIMITS,
                )
            except ScannerError:
                continue
            assert isinstance(generator, Generator)
            with torch.no_grad():
                generator(generator.sample_latent(2, seed=0))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    _exercise(data)


@FUZZ
@given(st.sampled_from(MAGICS), st.binary(max_size=2048))
def test_magic_prefixed_bytes(magic: bytes, rest: bytes) -> None:
    _exercise(magic + rest)


@FUZZ
@given(
    st.sampled_from(sorted(SEEDS)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_valid_files(seed: str, flips: list[tuple[float, int]], cut: float | None) -> None:
    data = bytearray(SEEDS[seed])
    for where, value in flips:
        data[int(where * len(data))] = value
    if cut is not None:
        data = data[: int(cut * len(data))]
    _exercise(bytes(data))
