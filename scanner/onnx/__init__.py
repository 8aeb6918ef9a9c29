"""ONNX support: safety analysis, the allowlisted ONNX → torch executor, Generator wrapping, export.

Imports stay light here (torch, onnx): `scanner.loading` uses `generator_from_onnx` and
`scanner.onnx.safety.inspect_onnx`.
"""

from __future__ import annotations

from scanner.onnx.executor import OnnxGraphModule, build_executor
from scanner.onnx.export import export_onnx, registry_generator_from_onnx
from scanner.onnx.model import generator_from_onnx, split_final_activation
from scanner.onnx.safety import inspect_onnx

__all__ = [
    "OnnxGraphModule",
    "build_executor",
    "export_onnx",
    "generator_from_onnx",
    "inspect_onnx",
    "registry_generator_from_onnx",
    "split_final_activation",
]
