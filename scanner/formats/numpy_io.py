"""NumPy .npy / .npz: headers read without unpickling; object arrays are findings.

An object-dtype array is stored as a pickle, and `np.load(allow_pickle=True)` runs it.
dgmscan reads arrays only with `allow_pickle=False`, and reports object arrays as unsafe.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from scanner.errors import Finding, InvalidModelError


def read_npy_header(data: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of .npy bytes, parsed with numpy's own header reader."""
    from numpy.lib import format as npy_format

    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = npy_format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError/SyntaxError/... on bad headers
        raise InvalidModelError(f"corrupt .npy header: {exc}") from None
    return tuple(int(s) for s in shape), bool(fortran), dtype


def npy_findings(data: bytes, *, member: str | None = None) -> list[Finding]:
    """Findings for one .npy payload: an object dtype means an embedded pickle."""
    where = member or ".npy"
    try:
        _shape, _fortran, dtype = read_npy_header(data)
    except InvalidModelError as exc:
        return [Finding("numpy.corrupt", f"{where}: {exc}", "medium", {"member": member})]
    if dtype.hasobject:
        return [
            Finding(
                "numpy.object_array",
                f"{where} holds an object-dtype array ({dtype}); loading it needs allow_pickle=True, "
                "which unpickles (and can run) arbitrary code",
                "high",
                {"member": member, "dtype": str(dtype)},
            )
        ]
    return []


def npy_info(data: bytes) -> dict[str, Any]:
    shape, fortran, dtype = read_npy_header(data)
    return {"shape": list(shape), "dtype": str(dtype), "fortran_order": fortran}
