"""Fixtures for the whole suite."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch


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
    """``gpu``-marked tests are skipped on a machine without CUDA (``pytest -m gpu`` runs them)."""
    if torch.cuda.is_available():
        return
    needs_cuda = pytest.mark.skip(reason="needs CUDA: run `pytest -m gpu` on a GPU machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(needs_cuda)
