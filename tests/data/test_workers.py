"""Loader workers: `data.num_workers: auto` uses this machine's cores; a worker stays quiet when the
main process stops."""

from __future__ import annotations

import os
import subprocess
import sys

from s4v_data.workers import available_workers


def test_available_workers_shares_the_cores_among_the_nodes_processes() -> None:
    cores = len(os.sched_getaffinity(0))
    assert available_workers(1) == max(1, min(16, cores - 1))
    assert available_workers(cores) == 1  # one process per core: still one worker each
    assert available_workers(1, cap=1) == 1


_ABANDONED_TRANSFERS = """
import os, time
from multiprocessing import current_process, resource_sharer
from multiprocessing.connection import Client
from s4v_data.workers import ignore_stop_signals

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


_LOADER_UNDER_STOP_SIGNALS = """
import multiprocessing, os, signal, time
import torch
from s4v_data.loader import SignalSafeLoader

def interrupt(signum, frame):
    raise KeyboardInterrupt

signal.signal(signal.SIGTERM, interrupt)  # what `s4v run` does; forked workers inherit it

class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 32

    def __getitem__(self, index):
        time.sleep(0.02)
        return torch.zeros(1, 3, 2, 2, dtype=torch.uint8), 0

def loader():
    return SignalSafeLoader(Slow(), batch_size=4, num_workers=2)

# A SIGTERM to the group that reaches a worker before its worker_init_fn has run.
os.register_at_fork(after_in_child=lambda: os.kill(os.getpid(), signal.SIGTERM))
print("batches", sum(1 for _ in loader()), flush=True)
# A worker killed (the OOM killer) fails the run: the other one must not keep it from exiting.
batches = iter(loader())
next(batches)
multiprocessing.active_children()[0].kill()
for _ in batches:
    pass
"""


def test_loader_workers_ignore_an_early_stop_signal_and_never_outlive_a_failed_main() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _LOADER_UNDER_STOP_SIGNALS],
        capture_output=True,
        text=True,
        timeout=60,  # a worker that ignores SIGTERM kept the failed process from exiting
    )
    assert result.stdout == "batches 8\n", result.stderr
    assert result.returncode == 1
    assert "is killed by signal: Killed" in result.stderr
    assert "KeyboardInterrupt" not in result.stderr
