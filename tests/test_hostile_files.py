"""The loader-level hostile corpus: every sample is rejected or refused with a clear error, nothing runs.

The corpus (tests/hostile_corpus.py) is generated, not shipped. Each pickle payload would
create a canary file if it were ever unpickled; a positive control below proves that by
unpickling a few of them with plain `pickle` in a throwaway subprocess.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scanner.checks.base import ScanConfig, ScanContext
from scanner.errors import InvalidModelError, RejectedModelError
from scanner.loading import inspect_file, load_generator

try:  # tests/ may or may not be a package, depending on who runs pytest how
    from tests.hostile_corpus import CANARY_NAME, PICKLE_PAYLOADS, SAMPLES, write_corpus
except ImportError:  # pragma: no cover
    from hostile_corpus import CANARY_NAME, PICKLE_PAYLOADS, SAMPLES, write_corpus

EXPECTED_ERROR = {"rejected": RejectedModelError, "invalid": InvalidModelError}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    directory = tmp_path_factory.mktemp("hostile")
    return write_corpus(directory)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_load_generator_refuses_with_our_error(name: str, corpus: dict[str, tuple[Path, str]]) -> None:
    path, expected = corpus[name]
    with pytest.raises((RejectedModelError, InvalidModelError)) as info:
        load_generator(path)
    assert type(info.value) is EXPECTED_ERROR[expected] or isinstance(info.value, EXPECTED_ERROR[expected]), (
        f"{name}: expected {expected}, got {type(info.value).__name__}: {info.value}"
    )
    message = str(info.value)
    assert path.name in message and len(message) > len(path.name) + 20, message
    if expected == "rejected":
        assert info.value.findings, "a rejection must carry its findings"
        assert "dgmscan export" in info.value.advice or info.value.advice, info.value.advice
    assert not (path.parent / CANARY_NAME).exists(), f"{name}: payload executed"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_inspect_file_reports_instead_of_raising(name: str, corpus: dict[str, tuple[Path, str]]) -> None:
    path, expected = corpus[name]
    report = inspect_file(path)
    assert report.status == (SAMPLES[name].inspect_expected or expected), report.to_dict()
    if report.status == "rejected":
        assert any(f.severity == "high" for f in report.findings)
        assert report.advice
    if report.status == "invalid":
        assert report.problem
    assert not (path.parent / CANARY_NAME).exists()


def test_lying_header_length_is_named(corpus: dict[str, tuple[Path, str]]) -> None:
    with pytest.raises(InvalidModelError, match="length field says 4096 bytes but the file has only"):
        load_generator(corpus["st_header_len_past_eof.safetensors"][0])
    with pytest.raises(InvalidModelError, match="compression ratio"):
        load_generator(corpus["zip_bomb.pt"][0])
    with pytest.raises(InvalidModelError, match="overlap"):
        load_generator(corpus["st_overlapping.safetensors"][0])


def test_canary_never_appears_after_scanning_everything(corpus: dict[str, tuple[Path, str]]) -> None:
    directory = next(iter(corpus.values()))[0].parent
    for path, _expected in corpus.values():
        inspect_file(path)
        with pytest.raises((RejectedModelError, InvalidModelError)):
            load_generator(path, architecture="vae_mnist_decoder", architecture_config={"hidden": 8})
    assert not (directory / CANARY_NAME).exists()


@pytest.mark.parametrize(
    "payload", ["pickle_builtins_open", "pickle_memo_trick", "pickle_marshal_function", "pickle_nested_loads"]
)
def test_positive_control_payloads_really_fire_when_unpickled(payload: str, tmp_path: Path) -> None:
    """Plain pickle.loads in a child process creates the canary: the corpus is live, not a dud."""
    data = PICKLE_PAYLOADS[payload](tmp_path)
    (tmp_path / "p.pkl").write_bytes(data)
    subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle,sys; pickle.loads(open(sys.argv[1],'rb').read())",
            str(tmp_path / "p.pkl"),
        ],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / CANARY_NAME).exists()


@pytest.mark.parametrize(
    "name",
    [
        "torch_zip_malicious_datapkl.pt",
        "pickle_memo_trick.pkl",
        "pt2_hiding_pickle.pt2",
        "st_offsets_past_eof.safetensors",
    ],
)
def test_format_checks_fail_on_hostile_files(name: str, corpus: dict[str, tuple[Path, str]], tmp_path: Path) -> None:
    from scanner.checks import load_all

    checks = load_all()
    path, expected = corpus[name]
    ctx = ScanContext(generator=None, targets=[], config=ScanConfig(), artifacts_dir=tmp_path, model_path=path)
    results = {n: checks[n]().run(ctx) for n in checks if n.startswith("format.")}
    assert results["format.detection"].status == "fail"
    if expected == "rejected":
        assert results["format.pickle_scan"].status == "fail"
        assert results["format.pickle_scan"].evidence["findings"]
    else:
        assert results["format.safetensors_header"].status == "fail"
        assert "past the end" in results["format.safetensors_header"].summary
    # not-applicable checks pass (a skip would make the verdict inconclusive)
    assert results["format.onnx_safety"].status == "pass"
    assert results["format.onnx_safety"].summary.startswith("not applicable")
