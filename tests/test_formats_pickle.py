"""Allowlist pickle scanning: clean state dicts pass, every known bypass is a finding, nothing runs."""

from __future__ import annotations

import io
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

from scanner.formats.limits import LoadLimits
from scanner.formats.pickle_scan import STATE_DICT_ALLOWLIST, scan_pickle

try:
    from tests.hostile_corpus import CANARY_NAME, PICKLE_PAYLOADS, payload_builtins_open
except ImportError:  # pragma: no cover
    from hostile_corpus import CANARY_NAME, PICKLE_PAYLOADS, payload_builtins_open


def _data_pkl(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    zf = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def test_allowlist_is_never_looser_than_torch_weights_only() -> None:
    from torch._weights_only_unpickler import _get_allowed_globals

    torch_allowed = set(_get_allowed_globals())
    assert torch_allowed >= STATE_DICT_ALLOWLIST, STATE_DICT_ALLOWLIST - torch_allowed


def test_clean_state_dicts_pass() -> None:
    state = OrderedDict(
        w=torch.randn(3, 4),
        p=torch.nn.Parameter(torch.randn(2)),
        n=torch.tensor(5, dtype=torch.long),
        h=torch.zeros(2, dtype=torch.float16),
        b=torch.zeros(2, dtype=torch.bfloat16),
    )
    result = scan_pickle(_data_pkl(state))
    assert result.clean, [f.message for f in result.findings]
    assert "torch._utils._rebuild_tensor_v2" in result.globals


@pytest.mark.parametrize(
    ("payload", "expected_global"),
    [
        ("pickle_os_system", "os.system"),
        ("pickle_builtins_exec", "builtins.exec"),
        ("pickle_memo_trick", "builtins.eval"),
        ("pickle_marshal_function", "marshal.loads"),
        ("pickle_marshal_function", "types.FunctionType"),
        ("pickle_importlib_getattr", "importlib.import_module"),
        ("pickle_importlib_getattr", "builtins.getattr"),
        ("pickle_nested_loads", "pickle.loads"),
        ("pickle_attrgetter", "operator.attrgetter"),
        ("pickle_protocol0", "builtins.open"),
    ],
)
def test_bypass_techniques_are_findings(payload: str, expected_global: str, tmp_path: Path) -> None:
    result = scan_pickle(PICKLE_PAYLOADS[payload](tmp_path))
    flagged = {f.detail.get("global") for f in result.findings}
    assert expected_global in flagged, [f.message for f in result.findings]
    assert all(f.severity == "high" for f in result.findings)
    assert not (tmp_path / CANARY_NAME).exists()


def test_computed_stack_global_and_extension_codes_are_findings(tmp_path: Path) -> None:
    dynamic = scan_pickle(PICKLE_PAYLOADS["pickle_dynamic_global"](tmp_path))
    assert "pickle.dynamic_global" in {f.code for f in dynamic.findings}
    ext = scan_pickle(PICKLE_PAYLOADS["pickle_ext_registry"](tmp_path))
    assert "pickle.extension_registry" in {f.code for f in ext.findings}


def test_pickled_module_is_a_finding_not_a_state_dict() -> None:
    result = scan_pickle(_data_pkl(torch.nn.Linear(2, 2)))
    assert "torch.nn.modules.linear.Linear" in {f.detail.get("global") for f in result.findings}


def test_dotted_attribute_on_an_allowlisted_module_is_not_allowed() -> None:
    # protocol 4 find_class resolves "a.b" by getattr: OrderedDict.fromkeys is not OrderedDict
    data = b"\x80\x04\x8c\x0bcollections\x8c\x14OrderedDict.fromkeys\x93)R."
    result = scan_pickle(data)
    assert "collections.OrderedDict.fromkeys" in {f.detail.get("global") for f in result.findings}


def test_truncated_and_garbage_pickles_are_problems_not_crashes(tmp_path: Path) -> None:
    data = payload_builtins_open(tmp_path)
    truncated = scan_pickle(data[: len(data) // 2])
    assert truncated.problem is not None and "corrupt or truncated" in truncated.problem
    assert scan_pickle(b"").problem == "empty pickle"
    assert scan_pickle(b"\x80\x04\xff\xff\xff").problem


def test_limits_bound_the_scan() -> None:
    many_nones = b"\x80\x04" + b"N0" * 5000 + b"N."
    result = scan_pickle(many_nones, limits=LoadLimits(max_pickle_opcodes=1000))
    assert result.problem and "max_pickle_opcodes" in result.problem
    big = scan_pickle(b"\x80\x04N." + b"\0" * 2000, limits=LoadLimits(max_pickle_bytes=1000))
    assert big.problem and "max_pickle_bytes" in big.problem


def test_stacked_pickles_are_all_scanned(tmp_path: Path) -> None:
    clean = pickle.dumps({"a": 1}, protocol=2)
    evil = PICKLE_PAYLOADS["pickle_os_system"](tmp_path)
    assert scan_pickle(clean + evil, stacked=False).clean  # pickle.load reads only the first
    assert not scan_pickle(clean + evil, stacked=True).clean  # legacy torch.save reads them all


def test_fickling_second_opinion_is_recorded(tmp_path: Path) -> None:
    result = scan_pickle(PICKLE_PAYLOADS["pickle_builtins_exec"](tmp_path))
    assert result.fickling_severity not in (None, "ERROR", "LIKELY_SAFE")
