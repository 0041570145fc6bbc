"""Fixtures for the whole suite."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One intra-op thread per test process: with `-n 2` two xdist workers share the two cores, and
# tensors as small as the tests' gain nothing from more threads.
torch.set_num_threads(1)

# Tests that start several busy processes (a Ray cluster and its trials, torchrun or DDP ranks) each
# want the whole machine: under xdist they all go to one worker, one at a time (`--dist loadgroup`).
# A single server process (the MLflow UI, on a free port) runs beside the other tests.
PROCESS_MARKS = ("ray", "processes")


@pytest.fixture(scope="session", autouse=True)
def private_cache_dir(tmp_path_factory) -> Iterator[Path]:
    """Each test session (each xdist worker) generates data into its own ``$S4V_CACHE_DIR``.

    Nothing a test does then writes to the user's ``~/.cache/s4v``, and two workers never share
    (or replace) a generated dataset. A test that sets the variable itself still wins.
    """
    cache = tmp_path_factory.mktemp("s4v-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("S4V_CACHE_DIR", str(cache))
        yield cache


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test, the count restored after it.

    Tensors as small as the tests' gain nothing from intra-op threads, and on a loaded shared CPU
    OpenMP's spinning threads make every op up to 50x slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def reference_eva():
    """The tests' own re-statement of the reference's EVA modules (``tests/reference_eva.py``)."""
    path = Path(__file__).with_name("reference_eva.py")
    spec = importlib.util.spec_from_file_location("s4v_test_reference_eva", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Group the tests that start processes (see PROCESS_MARKS); ``gpu``-marked tests are skipped
    on a machine without CUDA (``pytest -m gpu`` runs them)."""
    for item in items:
        if any(item.get_closest_marker(mark) for mark in PROCESS_MARKS):
            item.add_marker(pytest.mark.xdist_group("processes"))
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(needs_cuda)
