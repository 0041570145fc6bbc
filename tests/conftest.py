"""Fixtures for the whole suite."""

from __future__ import annotations

from collections.abc import Iterator

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
