"""The test zoo's cache (tests/zoo.py): an entry is produced once and stored; under pytest-xdist, after
the controller's prebuild, a worker asking for an entry left out of SUITE_ENTRIES fails with a message
naming the fix rather than training it beside the other workers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import zoo


@pytest.fixture
def empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(zoo, "CACHE_DIR", tmp_path)
    monkeypatch.setattr(zoo, "_memory", {})
    return tmp_path


def _produce(calls: list[int]) -> Any:
    def produce() -> dict[str, Any]:
        calls.append(1)
        return {"tensors": {"w": torch.arange(3.0)}, "meta": {"seed": 0}}

    return produce


def test_entry_is_produced_once_then_loaded(empty_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(zoo.PREBUILT_ENV, raising=False)
    calls: list[int] = []
    first = zoo._cached("probe-entry", _produce(calls))
    assert (empty_cache / "probe-entry.safetensors").is_file()
    monkeypatch.setattr(zoo, "_memory", {})  # as a new process would
    second = zoo._cached("probe-entry", _produce(calls))
    assert calls == [1]
    assert torch.equal(first["tensors"]["w"], second["tensors"]["w"]) and second["meta"] == {"seed": 0}


def test_worker_refuses_to_train_an_entry_left_out_of_the_prebuild(
    empty_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw7")
    monkeypatch.setenv(zoo.PREBUILT_ENV, "1")
    calls: list[int] = []
    with pytest.raises(zoo.ZooEntryNotPrebuilt, match="add the zoo function and its arguments to tests/zoo.py"):
        zoo._cached("unlisted-entry", _produce(calls))
    assert calls == [] and not (empty_cache / "unlisted-entry.safetensors").exists()
    # an entry the prebuild stored loads as usual
    monkeypatch.delenv(zoo.PREBUILT_ENV)
    zoo._cached("listed-entry", _produce(calls))
    monkeypatch.setenv(zoo.PREBUILT_ENV, "1")
    monkeypatch.setattr(zoo, "_memory", {})
    assert zoo._cached("listed-entry", _produce(calls))["meta"] == {"seed": 0} and calls == [1]


def test_key_changes_with_the_training_code(tmp_path: Path) -> None:
    """The cache outlives a clone, so an edit to the code that trains an entry must change its key."""
    for pattern in zoo.TRAINING_SOURCES:
        matches = list(zoo._REPO.glob(pattern))
        assert matches, f"{pattern} names no file: TRAINING_SOURCES is out of date"
        for path in matches:
            target = tmp_path / path.relative_to(zoo._REPO)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    assert zoo.sources_digest(tmp_path) == zoo.sources_digest()
    training = tmp_path / "scanner" / "training.py"
    training.write_text(training.read_text() + "\n# an edit\n")
    assert zoo.sources_digest(tmp_path) != zoo.sources_digest()
