"""A generated corpus of hostile model files (pickle exploits, zip bombs, lying headers, ...).

Each sample is written by a function into a directory the caller owns; nothing is shipped as a
binary blob. Every pickle payload, if it were ever unpickled, would create the file
`CANARY_NAME` next to the sample, so a test can prove nothing ran. Reused by the API tests:

    from tests.hostile_corpus import SAMPLES, write_corpus
    for name, (path, expected) in write_corpus(tmp_path).items(): ...

`expected` is "rejected" (unsafe / code-bearing: RejectedModelError) or "invalid"
(truncated / corrupt / lying / not a model: InvalidModelError).
"""

from __future__ import annotations

import io
import json
import marshal
import pickle
import random
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

CANARY_NAME = "CANARY_PWNED"


@dataclass(frozen=True)
class Sample:
    write: Callable[[Path], Path]  # writes the sample into a directory, returns its path
    expected: str  # load_generator: "rejected" | "invalid"
    description: str
    inspect_expected: str | None = None  # inspect_file status when it differs ("ok": the file alone is fine)


# -- raw pickle assembly (so payloads use exactly the opcodes we mean) ------------------------
P2 = pickle.PROTO + b"\x02"
P4 = pickle.PROTO + b"\x04"


def _str(s: str) -> bytes:
    b = s.encode()
    if len(b) < 256:
        return pickle.SHORT_BINUNICODE + bytes([len(b)]) + b
    return pickle.BINUNICODE + struct.pack("<I", len(b)) + b


def _bytes(b: bytes) -> bytes:
    return pickle.BINBYTES + struct.pack("<I", len(b)) + b


def _sglobal(module: str, name: str) -> bytes:
    return _str(module) + _str(name) + pickle.STACK_GLOBAL


def _call(func: bytes, *args: bytes) -> bytes:
    return func + pickle.MARK + b"".join(args) + pickle.TUPLE + pickle.REDUCE


def _canary(directory: Path) -> str:
    return str(directory / CANARY_NAME)


def _create_canary_code(directory: Path) -> str:
    return f"open({_canary(directory)!r}, 'w').close()"


def payload_os_system(d: Path) -> bytes:
    """Protocol 2 GLOBAL os.system('touch CANARY')."""
    return P2 + b"cos\nsystem\n" + _str(f"touch '{_canary(d)}'") + pickle.TUPLE1 + pickle.REDUCE + pickle.STOP


def payload_builtins_exec(d: Path) -> bytes:
    return P4 + _call(_sglobal("builtins", "exec"), _str(_create_canary_code(d))) + pickle.STOP


def payload_builtins_open(d: Path) -> bytes:
    """builtins.open(CANARY, 'w'): creates the canary the moment it is unpickled."""
    return P4 + _call(_sglobal("builtins", "open"), _str(_canary(d)), _str("w")) + pickle.STOP


def payload_memo_trick(d: Path) -> bytes:
    """'builtins' and 'eval' hidden in the memo inside a harmless list, fetched back for STACK_GLOBAL."""
    hide = (
        pickle.MARK
        + _str("builtins")
        + pickle.BINPUT
        + b"\x00"
        + _str("eval")
        + pickle.BINPUT
        + b"\x01"
        + pickle.LIST
        + pickle.POP
    )
    fetch = pickle.BINGET + b"\x00" + pickle.BINGET + b"\x01" + pickle.STACK_GLOBAL
    return P4 + hide + _call(fetch, _str(_create_canary_code(d))) + pickle.STOP


def payload_marshal_function(d: Path) -> bytes:
    """types.FunctionType(marshal.loads(code), {})() — code object smuggled as bytes."""
    source = f"def f():\n    {_create_canary_code(d)}\n"
    namespace: dict = {}
    exec(compile(source, "<payload>", "exec"), namespace)  # builds the code object only; f is not called
    code_bytes = marshal.dumps(namespace["f"].__code__)
    code_obj = _call(_sglobal("marshal", "loads"), _bytes(code_bytes))
    func = _sglobal("types", "FunctionType") + pickle.MARK + code_obj + pickle.EMPTY_DICT + pickle.TUPLE + pickle.REDUCE
    return P4 + func + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP


def payload_importlib_getattr(d: Path) -> bytes:
    """getattr(importlib.import_module('os'), 'system')('touch CANARY')."""
    module = _call(_sglobal("importlib", "import_module"), _str("os"))
    system = _call(_sglobal("builtins", "getattr"), module, _str("system"))
    return P4 + _call(system, _str(f"touch '{_canary(d)}'")) + pickle.STOP


def payload_nested_loads(d: Path) -> bytes:
    """pickle.loads(<another malicious pickle>)."""
    return P4 + _call(_sglobal("pickle", "loads"), _bytes(payload_builtins_open(d))) + pickle.STOP


def payload_attrgetter(d: Path) -> bytes:
    """operator.attrgetter('system')(importlib.import_module('os'))('touch CANARY')."""
    getter = _call(_sglobal("operator", "attrgetter"), _str("system"))
    system = _call(getter, _call(_sglobal("importlib", "import_module"), _str("os")))
    return P4 + _call(system, _str(f"touch '{_canary(d)}'")) + pickle.STOP


def payload_dynamic_global(d: Path) -> bytes:
    """STACK_GLOBAL whose module name is computed at unpickling time (str.join)."""
    joined = _call(_sglobal("builtins", "str"), _str("builtins"))  # a computed, not literal, string
    return P4 + _call(joined + _str("open") + pickle.STACK_GLOBAL, _str(_canary(d)), _str("w")) + pickle.STOP


def payload_ext_registry(d: Path) -> bytes:
    """EXT1: import by copyreg extension code instead of by name."""
    return P2 + pickle.EXT1 + b"\x07" + pickle.EMPTY_TUPLE + pickle.REDUCE + pickle.STOP


def payload_protocol0(d: Path) -> bytes:
    """A text (protocol 0) pickle: no \\x80 header to recognise it by."""
    return b"cbuiltins\nopen\n(V" + _canary(d).encode() + b"\nVw\ntR."


PICKLE_PAYLOADS: dict[str, Callable[[Path], bytes]] = {
    "pickle_os_system": payload_os_system,
    "pickle_builtins_exec": payload_builtins_exec,
    "pickle_builtins_open": payload_builtins_open,
    "pickle_memo_trick": payload_memo_trick,
    "pickle_marshal_function": payload_marshal_function,
    "pickle_importlib_getattr": payload_importlib_getattr,
    "pickle_nested_loads": payload_nested_loads,
    "pickle_attrgetter": payload_attrgetter,
    "pickle_dynamic_global": payload_dynamic_global,
    "pickle_ext_registry": payload_ext_registry,
    "pickle_protocol0": payload_protocol0,
}


# -- helpers for building archives -----------------------------------------------------------
def small_state_dict() -> dict[str, torch.Tensor]:
    """A vae_mnist_decoder-shaped state dict, tiny (hidden=8), deterministic."""
    from scanner.architectures import build

    torch.manual_seed(0)
    return dict(build("vae_mnist_decoder", {"hidden": 8}).body.state_dict())


def torch_zip_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def replace_zip_member(data: bytes, member_suffix: str, new: bytes) -> bytes:
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, new if info.filename.endswith(member_suffix) else src.read(info))
    return out.getvalue()


def _zip(entries: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def safetensors_bytes(header: dict, payload: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def _raw_header_bytes(header_json: str, payload: bytes) -> bytes:
    raw = header_json.encode()
    return struct.pack("<Q", len(raw)) + raw + payload


def valid_safetensors_bytes(with_nan: float | None = None) -> bytes:
    """A real vae_mnist_decoder(hidden=8) file written by save_safetensors."""
    import tempfile

    from scanner.architectures import build
    from scanner.formats.safetensors_io import save_safetensors

    torch.manual_seed(0)
    g = build("vae_mnist_decoder", {"hidden": 8})
    if with_nan is not None:
        with torch.no_grad():
            g.body[0].weight[0, 0] = with_nan
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.safetensors"
        save_safetensors(g, path)
        return path.read_bytes()


def onnx_bytes() -> bytes:
    """A tiny valid ONNX generator z(1,4) -> tanh(z W) built with onnx.helper."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 8), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "W"], ["h"]), helper.make_node("Tanh", ["h"], ["x"])],
        "g",
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def onnx_nan_bytes() -> bytes:
    """The tiny ONNX model with one NaN weight."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(onnx_bytes())
    weight = numpy_helper.to_array(model.graph.initializer[0]).copy()
    weight[0, 0] = np.nan
    model.graph.initializer[0].CopyFrom(numpy_helper.from_array(weight, "W"))
    return model.SerializeToString()


def _writer(name: str, make: Callable[[Path], bytes]) -> Callable[[Path], Path]:
    def write(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / name
        path.write_bytes(make(directory))
        return path

    return write


def _zip_bomb(_d: Path) -> bytes:
    """A torch.save-looking zip whose storage member inflates 256 MiB of zeros from ~250 KB."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("archive/data.pkl", replace_zip_member_pickle())
        with zf.open("archive/data/0", "w", force_zip64=True) as fh:
            chunk = bytes(1 << 20)
            for _ in range(256):
                fh.write(chunk)
    return out.getvalue()


def replace_zip_member_pickle() -> bytes:
    data = torch_zip_bytes(small_state_dict())
    zf = zipfile.ZipFile(io.BytesIO(data))
    return zf.read([n for n in zf.namelist() if n.endswith("data.pkl")][0])


def _many_members(_d: Path) -> bytes:
    from scanner.formats.limits import DEFAULT_LIMITS

    entries = {"archive/data.pkl": replace_zip_member_pickle()}
    entries.update({f"archive/data/{i}": b"" for i in range(DEFAULT_LIMITS.max_zip_members + 1)})
    return _zip(entries)


def _duplicate_members(d: Path) -> bytes:
    """Two archive/data.pkl entries: a clean one first, a malicious one second."""
    import warnings

    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        with zipfile.ZipFile(out, "w") as zf:
            zf.writestr("archive/data.pkl", replace_zip_member_pickle())
            zf.writestr("archive/data.pkl", payload_builtins_open(d))
            zf.writestr("archive/version", b"3\n")
    return out.getvalue()


def _mixed_roots(d: Path) -> bytes:
    """A clean torch zip plus a malicious data.pkl under a second root folder listed first:
    torch takes the root from the first member, so the scanned and the loaded pickle could differ."""
    clean = zipfile.ZipFile(io.BytesIO(torch_zip_bytes(small_state_dict())))
    entries = {"evil/data.pkl": payload_builtins_open(d)}
    entries.update({info.filename: clean.read(info) for info in clean.infolist()})
    return _zip(entries)


def _pt2_hiding_pickle(d: Path) -> bytes:
    inner = replace_zip_member(torch_zip_bytes(small_state_dict()), "data.pkl", payload_builtins_exec(d))
    return _zip(
        {
            "archive/archive_format": b"pt2",
            "archive/archive_version": b"0",
            "archive/models/model.json": b"{}",
            "archive/data/sample_inputs/model.pt": inner,
            "archive/byteorder": b"little",
        }
    )


def _torchscript(_d: Path) -> bytes:
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TorchScript is deprecated, still what people upload
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _torch_package(d: Path) -> bytes:
    return _zip(
        {
            "pkg/.data/version": b"6\n",
            "pkg/.data/extern_modules": b"os\n",
            "pkg/model/model.pkl": payload_builtins_open(d),
            "pkg/model/__init__.py": b"import os\n",
        }
    )


def _npy_object(_d: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"weights": 1}, None], dtype=object), allow_pickle=True)
    return buf.getvalue()


def _npz_object(_d: Path) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, w=np.zeros(3), obj=np.array([{"a": 1}], dtype=object))
    return buf.getvalue()


def _f32(n: int) -> bytes:
    return np.zeros(n, dtype=np.float32).tobytes()


def _truncate(make: Callable[[Path], bytes], fraction: float = 0.5) -> Callable[[Path], bytes]:
    def cut(d: Path) -> bytes:
        data = make(d)
        return data[: max(1, int(len(data) * fraction))]

    return cut


def _state_dict_zip(_d: Path) -> bytes:
    return torch_zip_bytes(small_state_dict())


def _arch_meta_safetensors(config: dict, arch: str = "vae_mnist_decoder") -> Callable[[Path], bytes]:
    def make(_d: Path) -> bytes:
        header = {
            "__metadata__": {"dgmscan.architecture": arch, "dgmscan.architecture_config": json.dumps(config)},
            "w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        }
        return safetensors_bytes(header, _f32(2))

    return make


SAMPLES: dict[str, Sample] = {
    **{
        f"{name}.pkl": Sample(_writer(f"{name}.pkl", make), "rejected", (make.__doc__ or name).strip())
        for name, make in PICKLE_PAYLOADS.items()
    },
    "pickle_named_safetensors.safetensors": Sample(
        _writer("pickle_named_safetensors.safetensors", payload_builtins_open),
        "rejected",
        "a malicious pickle named like a safetensors file (format from bytes, not extension)",
    ),
    "legacy_torch_save.pt": Sample(
        _writer(
            "legacy_torch_save.pt",
            lambda d: _legacy_torch_save(),
        ),
        "rejected",
        "legacy (non-zip) torch.save: stacked raw pickles",
    ),
    "torch_zip_malicious_datapkl.pt": Sample(
        _writer(
            "torch_zip_malicious_datapkl.pt",
            lambda d: replace_zip_member(torch_zip_bytes(small_state_dict()), "data.pkl", payload_builtins_open(d)),
        ),
        "rejected",
        "torch.save zip whose data.pkl opens the canary",
    ),
    "torch_zip_memo_trick.pt": Sample(
        _writer(
            "torch_zip_memo_trick.pt",
            lambda d: replace_zip_member(torch_zip_bytes(small_state_dict()), "data.pkl", payload_memo_trick(d)),
        ),
        "rejected",
        "torch.save zip whose data.pkl uses the memo trick",
    ),
    "torch_zip_full_module.pt": Sample(
        _writer("torch_zip_full_module.pt", lambda d: torch_zip_bytes(torch.nn.Linear(2, 2))),
        "rejected",
        "torch.save of a whole nn.Module (pickled classes)",
    ),
    "pt2_hiding_pickle.pt2": Sample(
        _writer("pt2_hiding_pickle.pt2", _pt2_hiding_pickle),
        "rejected",
        ".pt2-style archive carrying a torch zip with a malicious pickle",
    ),
    "torchscript.pt": Sample(_writer("torchscript.pt", _torchscript), "rejected", "TorchScript archive"),
    "torch_package.pt": Sample(_writer("torch_package.pt", _torch_package), "rejected", "torch.package archive"),
    "npy_object.npy": Sample(_writer("npy_object.npy", _npy_object), "rejected", "object-dtype .npy (pickle)"),
    "npz_object.npz": Sample(_writer("npz_object.npz", _npz_object), "rejected", "object-dtype array in .npz"),
    "zip_bomb.pt": Sample(_writer("zip_bomb.pt", _zip_bomb), "invalid", "256 MiB of zeros in a 250 KB member"),
    "zip_many_members.pt": Sample(_writer("zip_many_members.pt", _many_members), "invalid", "too many members"),
    "zip_duplicate_members.pt": Sample(
        _writer("zip_duplicate_members.pt", _duplicate_members), "invalid", "duplicate data.pkl (clean + malicious)"
    ),
    "zip_mixed_roots.pt": Sample(
        _writer("zip_mixed_roots.pt", _mixed_roots),
        "rejected",
        "two root folders, the first holding a malicious pickle",
    ),
    "st_offsets_past_eof.safetensors": Sample(
        _writer(
            "st_offsets_past_eof.safetensors",
            lambda d: safetensors_bytes({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, _f32(2)),
        ),
        "invalid",
        "data_offsets past the end of the file",
    ),
    "st_overlapping.safetensors": Sample(
        _writer(
            "st_overlapping.safetensors",
            lambda d: safetensors_bytes(
                {
                    "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]},
                },
                _f32(3),
            ),
        ),
        "invalid",
        "two tensors sharing bytes",
    ),
    "st_wrong_dtype_size.safetensors": Sample(
        _writer(
            "st_wrong_dtype_size.safetensors",
            lambda d: safetensors_bytes({"w": {"dtype": "F64", "shape": [2], "data_offsets": [0, 8]}}, _f32(2)),
        ),
        "invalid",
        "shape x dtype size != byte span",
    ),
    "st_huge_shape.safetensors": Sample(
        _writer(
            "st_huge_shape.safetensors",
            lambda d: safetensors_bytes(
                {"w": {"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 8]}}, _f32(2)
            ),
        ),
        "invalid",
        "a 2^40-element tensor declared over 8 bytes",
    ),
    "st_header_len_gt_file.safetensors": Sample(
        _writer("st_header_len_gt_file.safetensors", lambda d: struct.pack("<Q", 1 << 30) + b'{"w": {}}'),
        "invalid",
        "header length field larger than the file",
    ),
    "st_header_len_past_eof.safetensors": Sample(
        _writer("st_header_len_past_eof.safetensors", lambda d: struct.pack("<Q", 4096) + b'{"w": {}}' + bytes(64)),
        "invalid",
        "header length field (within the header limit) pointing past the end of the file",
    ),
    "st_bad_json.safetensors": Sample(
        _writer("st_bad_json.safetensors", lambda d: struct.pack("<Q", 10) + b"{not json!"),
        "invalid",
        "header is not JSON",
    ),
    "st_duplicate_keys.safetensors": Sample(
        _writer(
            "st_duplicate_keys.safetensors",
            lambda d: _raw_header_bytes(
                '{"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
                '"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}',
                _f32(2),
            ),
        ),
        "invalid",
        "the same tensor name twice",
    ),
    "st_unknown_dtype.safetensors": Sample(
        _writer(
            "st_unknown_dtype.safetensors",
            lambda d: safetensors_bytes({"w": {"dtype": "OBJ", "shape": [2], "data_offsets": [0, 8]}}, _f32(2)),
        ),
        "invalid",
        "dtype that does not exist",
    ),
    "st_gap.safetensors": Sample(
        _writer(
            "st_gap.safetensors",
            lambda d: safetensors_bytes({"w": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, _f32(2)),
        ),
        "invalid",
        "hidden bytes before the first tensor",
    ),
    "st_nan_weights.safetensors": Sample(
        _writer("st_nan_weights.safetensors", lambda d: valid_safetensors_bytes(float("nan"))),
        "invalid",
        "a NaN weight",
    ),
    "st_inf_weights.safetensors": Sample(
        _writer("st_inf_weights.safetensors", lambda d: valid_safetensors_bytes(float("inf"))),
        "invalid",
        "an Inf weight",
    ),
    "st_hostile_arch_config.safetensors": Sample(
        _writer("st_hostile_arch_config.safetensors", _arch_meta_safetensors({"hidden": 10**9})),
        "invalid",
        "architecture config asking for a gigantic model",
    ),
    "st_unknown_arch.safetensors": Sample(
        _writer("st_unknown_arch.safetensors", _arch_meta_safetensors({}, arch="os.system")),
        "invalid",
        "architecture name not in the registry",
    ),
    "st_no_arch.safetensors": Sample(
        _writer(
            "st_no_arch.safetensors",
            lambda d: safetensors_bytes({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, _f32(2)),
        ),
        "invalid",
        "weights without an architecture",
        inspect_expected="ok",
    ),
    "truncated.safetensors": Sample(
        _writer("truncated.safetensors", _truncate(lambda d: valid_safetensors_bytes())),
        "invalid",
        "safetensors cut in half",
    ),
    "truncated_torch_zip.pt": Sample(
        _writer("truncated_torch_zip.pt", _truncate(_state_dict_zip)), "invalid", "torch zip cut in half"
    ),
    "onnx_nan_weights.onnx": Sample(
        _writer("onnx_nan_weights.onnx", lambda d: onnx_nan_bytes()), "invalid", "ONNX initializer holding NaN"
    ),
    "truncated.onnx": Sample(_writer("truncated.onnx", _truncate(lambda d: onnx_bytes(), 0.6)), "invalid", "ONNX cut"),
    "truncated_pickle.pkl": Sample(
        _writer("truncated_pickle.pkl", _truncate(payload_builtins_open)), "rejected", "pickle cut in half"
    ),
    "truncated.npy": Sample(
        _writer("truncated.npy", _truncate(lambda d: _npy_bytes(np.zeros((8, 8), np.float32)), 0.05)),
        "invalid",
        "npy cut inside its header",
    ),
    "plain_npy.npy": Sample(
        _writer("plain_npy.npy", lambda d: _npy_bytes(np.zeros((2, 2), np.float32))), "invalid", "an array, no model"
    ),
    "random_bytes.bin": Sample(
        _writer("random_bytes.bin", lambda d: random.Random(0).randbytes(4096)), "invalid", "4 KiB of noise"
    ),
    "empty.pt": Sample(_writer("empty.pt", lambda d: b""), "invalid", "an empty file"),
}


def _legacy_torch_save() -> bytes:
    buf = io.BytesIO()
    torch.save(small_state_dict(), buf, _use_new_zipfile_serialization=False)
    return buf.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_corpus(directory: Path, names: list[str] | None = None) -> dict[str, tuple[Path, str]]:
    """Write every sample (or `names`) into `directory`: name -> (path, expected outcome)."""
    return {name: (SAMPLES[name].write(directory), SAMPLES[name].expected) for name in (names or list(SAMPLES))}
