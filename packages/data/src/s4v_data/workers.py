"""DataLoader worker processes: how many, and how they live through Ctrl-C and SIGTERM.

A terminal's Ctrl-C and the SIGTERM of ``timeout``, SLURM or Kubernetes reach the whole process
group: the main process and its loader workers. The main process stops cleanly (its run ends
KILLED, with a resume hint) and shuts its workers down; a worker that died of the signal instead
made the main process fail with ``DataLoader worker ... killed by signal``. So a worker ignores both
signals from its first instruction on:

* :func:`stop_signals_blocked`: the main process blocks them while it forks its workers, so that a
  signal arriving before a worker has run :func:`ignore_stop_signals` waits there and is dropped;
* :func:`ignore_stop_signals` (the loaders' ``worker_init_fn``): ignore both, unblock them, and stay
  quiet when the main process abandons a batch it was receiving;
* :func:`kill_leftover_workers` (at exit): multiprocessing ends daemonic children at exit with
  SIGTERM, which these workers ignore, and then waits for them. A worker still alive then (its main
  process failed, for instance because another worker was killed) would hang the exit: it is
  killed instead.

Nothing here imports torch.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import multiprocessing.util  # registers multiprocessing's exit handler now, before ours
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from traceback import walk_tb
from types import TracebackType

__all__ = [
    "available_workers",
    "ignore_stop_signals",
    "kill_leftover_workers",
    "kill_leftover_workers_at_exit",
    "stop_signals_blocked",
]

STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_CAN_BLOCK = hasattr(signal, "pthread_sigmask")  # not on Windows


def available_workers(processes_on_node: int = 1, *, cap: int = 16) -> int:
    """Loader workers per process that use this machine's cores and leave one for the process.

    The cores this process may run on (its CPU affinity, which SLURM and containers narrow) are
    shared by the training processes of the node (``torchrun``'s ``LOCAL_WORLD_SIZE``); each
    process keeps one core for itself. At least 1, at most ``cap``.
    """
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(1, min(cap, cores // max(1, processes_on_node) - 1))


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Block SIGINT and SIGTERM in this thread (workers forked meanwhile inherit the mask).

    A stop signal sent meanwhile is delivered, to the main process, when the block ends.
    """
    if not _CAN_BLOCK:
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals(worker_id: int) -> None:
    """In a loader worker: leave SIGINT and SIGTERM to the main process (see the module doc)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if _CAN_BLOCK:  # a signal that waited for the handler above is dropped now
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
    sys.excepthook = _quiet_when_the_receiver_left(sys.excepthook)


ExceptHook = Callable[[type[BaseException], BaseException, TracebackType | None], object]


def _quiet_when_the_receiver_left(excepthook: ExceptHook) -> ExceptHook:
    """``excepthook`` that says nothing of a batch transfer the main process abandoned.

    A worker hands each batch's tensors over as file descriptors, served by multiprocessing's
    ``resource_sharer`` thread, which reports any error through ``sys.excepthook``. When the main
    process stops (Ctrl-C, SIGTERM) while it receives one, that thread's connection breaks and the
    worker printed a traceback after the run's clean stop; the main process reports the stop.
    """
    sharer = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, value, tb):
        served = any(frame.f_code.co_filename.endswith(sharer) for frame, _ in walk_tb(tb))
        if served and issubclass(kind, (EOFError, ConnectionError)):
            return None
        return excepthook(kind, value, tb)

    return hook


def kill_leftover_workers() -> None:
    """Kill the daemonic child processes still alive (see the module doc)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


@functools.cache  # registers once
def kill_leftover_workers_at_exit() -> None:
    """Run :func:`kill_leftover_workers` at exit, before multiprocessing's own exit handler.

    Handlers run last-registered first, and multiprocessing registered its own when it was
    imported (above).
    """
    atexit.register(kill_leftover_workers)
