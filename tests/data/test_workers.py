"""Loader worker defaults: `data.num_workers: auto` uses this machine's cores."""

from __future__ import annotations

import os

from s4v_data.dataset import available_workers


def test_available_workers_shares_the_cores_among_the_nodes_processes() -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_workers(1) == max(1, min(16, cores - 1))
    assert available_workers(cores) == 1  # one process per core: still one worker each
    assert available_workers(1, cap=1) == 1
