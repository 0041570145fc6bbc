"""The DataLoader every s4v loader is: workers that leave stop signals to the main process.

It imports torch but not torchvision (the clip transforms), so a process that only needs a loader
starts quickly.
"""

from __future__ import annotations

from torch.utils.data import DataLoader, Dataset

from s4v_data.workers import (
    ignore_stop_signals,
    kill_leftover_workers_at_exit,
    stop_signals_blocked,
)

__all__ = ["SignalSafeLoader"]


class SignalSafeLoader(DataLoader):
    """A DataLoader whose workers leave Ctrl-C and SIGTERM to the main process from their start,
    and never outlive it (see :mod:`s4v_data.workers`). Takes DataLoader's arguments but
    ``worker_init_fn``.
    """

    def __init__(self, dataset: Dataset, **options) -> None:
        super().__init__(dataset, worker_init_fn=ignore_stop_signals, **options)
        if self.num_workers > 0:
            kill_leftover_workers_at_exit()

    def __iter__(self):
        with stop_signals_blocked():  # the workers are forked here
            return super().__iter__()
