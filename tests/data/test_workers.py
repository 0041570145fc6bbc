"""Loader workers: `data.num_workers: auto` uses this machine's cores; a worker stays quiet when the
main process stops."""

from __future__ import annotations

import os
import subprocess
import sys

from s4v_data.dataset import available_workers


def test_available_workers_shares_the_cores_among_the_nodes_processes() -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_workers(1) == max(1, min(16, cores - 1))
    assert available_workers(cores) == 1  # one process per core: still one worker each
    assert available_workers(1, cap=1) == 1


_ABANDONED_TRANSFERS = """
import os, time
from multiprocessing import current_process, resource_sharer
from multiprocessing.connection import Client
from s4v_data.dataset import ignore_stop_signals

ignore_stop_signals(0)  # what every loader worker runs first
# A worker hands a batch's tensors over as descriptors served by the resource_sharer thread.
address, key = resource_sharer.DupFd(os.pipe()[0])._id
# The main process connects and stops (Ctrl-C, SIGTERM) before the descriptor is sent...
Client(address, authkey=current_process().authkey).close()
time.sleep(0.5)
# ...while a request for a descriptor that was never registered is a real error, still shown.
with Client(address, authkey=current_process().authkey) as conn:
    conn.send((key + 1, os.getpid()))
time.sleep(0.5)
"""


def test_a_worker_says_nothing_of_a_transfer_the_stopping_main_process_abandoned() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _ABANDONED_TRANSFERS], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Traceback") == 1, result.stderr
    assert "EOFError" not in result.stderr and "KeyError" in result.stderr
