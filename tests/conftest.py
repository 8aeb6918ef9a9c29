"""Shared pytest fixtures: the model zoo (tests/zoo.py) and the paper's MNIST target data; how the
suite splits over pytest-xdist workers when asked to (DGMSCAN_TEST_WORKERS, scripts/test.sh)."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

# The repository root on sys.path, so `import scanner` and `from tests import zoo` work without installing.
_REPO_ROOT = Path(__file__).resolve().parent.parent
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from scanner.data import load_devil_target, load_z_trigger  # noqa: E402
from scanner.generator import Generator  # noqa: E402
from tests import zoo as _zoo  # noqa: E402

# Under pytest-xdist the workers share the cores: each takes its share of intra-op threads (and so do
# the API, Celery and CLI processes it starts, through OMP_NUM_THREADS), instead of every worker
# starting one thread per core and all of them oversubscribing the machine.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    _threads = max(1, len(os.sched_getaffinity(0)) // _XDIST_WORKERS)
    torch.set_num_threads(_threads)
    os.environ["OMP_NUM_THREADS"] = str(_threads)

_SERVICE_DIR = "tests/service/"


def _file_group(nodeid: str) -> str:
    """The xdist work unit of a test: its file, except that the tests/service files form one unit,
    because they share one Redis db number on the machine's Redis and two workers' Celery processes
    there would take each other's tasks."""
    path = nodeid.split("::", 1)[0]
    return _SERVICE_DIR if path.startswith(_SERVICE_DIR) else path


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: no error where it is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """`--dist loadfile` with tests/service as one unit: a file's module fixtures (trained models) are
    built once, on one worker. (xdist's loadgroup would do this through markers, but it renames node
    ids in a way pytest 9 no longer honours.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class ServiceAsOneFileScheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _file_group(nodeid)

    return ServiceAsOneFileScheduling(config, log)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own sessionstart starts the workers
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist the controller trains the whole test zoo first, on its fixed threads with the
    cores to itself; the workers then only load it (tests/zoo.py SUITE_ENTRIES)."""
    config = session.config
    if hasattr(config, "workerinput") or not config.pluginmanager.hasplugin("dsession"):
        return  # a worker, or one process (it trains what its tests ask for, when they ask)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    _zoo.build_suite_entries(reporter.write_line if reporter is not None else print)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _XDIST_WORKERS > 1:
        # Files with the most slow tests first (scripts/test.sh passes --no-loadscope-reorder), so the
        # workers end on light files and finish together, rather than one running a heavy file alone.
        slow = Counter(_file_group(item.nodeid) for item in items if item.get_closest_marker("slow"))
        items.sort(key=lambda item: -slow[_file_group(item.nodeid)])


@pytest.fixture(scope="session")
def zoo():
    """The zoo module: `zoo.benign_dcgan(seed)`, `zoo.benign_vae(seed)`, `zoo.attacked(kind, trigger, seed)`."""
    return _zoo


@pytest.fixture(scope="session")
def _benign_dcgan_cached() -> Generator:
    return _zoo.benign_dcgan(seed=0)


@pytest.fixture
def benign_dcgan(_benign_dcgan_cached: Generator) -> Generator:
    """A fresh copy of the small benign zoo DCGAN (seed 0); safe to modify."""
    return _benign_dcgan_cached.copy()


@pytest.fixture(scope="session")
def _benign_vae_cached() -> Generator:
    return _zoo.benign_vae(seed=0)


@pytest.fixture
def benign_vae(_benign_vae_cached: Generator) -> Generator:
    """A fresh copy of the benign zoo VAE decoder (seed 0); safe to modify."""
    return _benign_vae_cached.copy()


@pytest.fixture(scope="session")
def devil_target() -> torch.Tensor:
    """The paper's devil-face target, (1, 28, 28) float32 in [-1, 1]."""
    return load_devil_target()


@pytest.fixture(scope="session")
def z_trigger() -> torch.Tensor:
    """The paper's (1, 100) N(0, I) trigger for the devil target."""
    return load_z_trigger()
