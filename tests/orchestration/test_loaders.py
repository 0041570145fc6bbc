"""What a GPU run needs from its loaders: workers by default, prefetching, persistent eval workers."""

from __future__ import annotations

from dataclasses import replace

import torch

from s4v_data.workers import available_workers
from s4v_orchestration.runtime import DistEnv
from s4v_orchestration.tasks import RunContext, get_task


def test_num_workers_auto_resolves_to_this_machines_share(tiny_config) -> None:
    config = tiny_config("auto", **{"data.num_workers": "auto"})
    assert config.data.num_workers == "auto"
    assert config.data.workers() == available_workers(1)
    assert tiny_config("two", **{"data.num_workers": 2}).data.workers() == 2


def test_val_loader_keeps_its_workers_and_prefetches(tiny_config) -> None:
    config = tiny_config(
        "loaders", **{"data.num_workers": 1, "data.prefetch_factor": 3}
    ).with_defaults()
    task = get_task("recognition")
    parts = task.build(config)
    run = RunContext(config=config, parts=parts, device=torch.device("cpu"), env=DistEnv())
    val = task.val_loader(run)
    assert val.persistent_workers and val.prefetch_factor == 3 and val.num_workers == 1
    train = task.train_loader(run, epoch=0)
    assert train.prefetch_factor == 3 and not train.persistent_workers
    off = tiny_config("off", **{"data.num_workers": 0}).with_defaults()
    assert not task.val_loader(replace(run, config=off)).persistent_workers
