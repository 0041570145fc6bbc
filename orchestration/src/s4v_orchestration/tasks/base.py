"""The per-task seam of the training loop.

``train()`` is the same for every task; what differs (preparing the data, building the model, the
datasets and their loaders, the loss, evaluation and the final report, and which validation metric
picks the best checkpoint) lives behind :class:`Task`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from s4v_data.order import evaluation_shard, training_order
from s4v_data.synthetic import generate
from s4v_orchestration.config import ConfigError, RunConfig
from s4v_orchestration.runtime import DistEnv

# track(iterable, total, description) -> the same items, shown as a progress bar.
Track = Callable[[Iterable[Any], int, str], Iterable[Any]]


def no_track(items: Iterable[Any], total: int, description: str) -> Iterable[Any]:
    return items


@dataclass(kw_only=True)
class TaskParts:
    """What a task builds for one run."""

    model: nn.Module  # trainable parameters have requires_grad=True; the frozen backbone does not
    train_data: Dataset | None  # None when built for evaluation only
    val_data: Dataset
    backbone_identity: dict[str, Any]  # name, pretrained tag, weights-file hash
    extra: dict[str, Any] = field(default_factory=dict)  # saved in checkpoints (e.g. class names)


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """What a task's methods need to know about the run they serve, fixed once it is built."""

    config: RunConfig
    parts: TaskParts
    device: torch.device
    env: DistEnv
    track: Track = no_track  # progress bars (rank 0 of a run with progress shown)


@dataclass(kw_only=True)
class Evaluation:
    """Metrics of one evaluation pass (unprefixed, e.g. ``top1``) and the report files written."""

    metrics: dict[str, float]
    files: list[Path] = field(default_factory=list)


class Task(Protocol):
    """Everything task-specific that ``train()`` needs.

    A task keeps no state between calls: what a method needs comes in as arguments, the run's
    settings and built parts in a :class:`RunContext`. Tasks subclass this protocol, so they
    inherit its default methods (:meth:`parameter_groups`, :meth:`after_optimizer_step`).
    """

    name: str
    best_metric: str  # validation metric (higher is better) that selects best.pt, e.g. "top1"

    def prepare_data(
        self,
        config: RunConfig,
        *,
        announce: Callable[[str], None],
        with_train_data: bool = True,
    ) -> None:
        """Make sure the data exists (generate or check it); runs on rank 0 before ``build``."""

    def build(
        self, config: RunConfig, *, with_train_data: bool = True, model: nn.Module | None = None
    ) -> TaskParts:
        """The model (on the CPU) and the datasets (no training set for evaluation only).

        ``model`` replaces the one the config describes (e.g. a converted release).
        """

    def train_loader(self, run: RunContext, *, epoch: int) -> DataLoader:
        """This rank's training batches for ``epoch`` (a pure function of seed and epoch)."""

    def val_loader(self, run: RunContext) -> DataLoader:
        """This rank's share of the validation set."""

    def parameter_groups(self, model: nn.Module, config: RunConfig) -> list[dict[str, Any]]:
        """AdamW parameter groups, each may carry its own ``lr``; by default one group of every
        trainable parameter at ``solver.lr``."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def loss(self, model: nn.Module, batch: Any, run: RunContext) -> tuple[torch.Tensor, int]:
        """Training loss of one batch and the number of clips in it."""

    def after_optimizer_step(self, model: nn.Module) -> None:
        """Called after every optimizer step (e.g. to clamp a parameter); by default nothing."""

    def validate(self, model: nn.Module, loader: DataLoader, run: RunContext) -> dict[str, float]:
        """Validation metrics over all ranks (unprefixed), identical on every rank."""

    def final_test(self, model: nn.Module, run: RunContext, out_dir: Path) -> Evaluation:
        """The end-of-run test of the best weights; rank 0 writes the report files to ``out_dir``."""


# -- helpers every task uses ------------------------------------------------------------------


def build_from_seed(config: RunConfig, build: Callable[[], nn.Module]) -> nn.Module:
    """``build()`` with torch's generator seeded from ``config.seed`` alone (restored after).

    A random backbone (pretrained=None), which the checkpoint does not store, is then rebuilt
    identically on resume, for evaluation and on every DDP rank.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        return build()


def generate_synthetic(
    config: RunConfig, announce: Callable[[str], None], *, captions: bool = False
) -> None:
    """Generate the synthetic dataset of ``config.data`` unless it is already there."""
    synthetic = config.data.synthetic
    if not Path(config.data.root).exists():
        what = "captioned synthetic dataset" if captions else "synthetic dataset"
        announce(f"generating the {what} in {config.data.root} (first run only)")
    try:
        generate(
            config.data.root,
            seed=synthetic.seed,
            videos_per_class=synthetic.videos_per_class,
            num_frames=synthetic.num_frames,
            size=synthetic.size,
            captions=captions,
        )
    except FileExistsError as err:  # an existing folder is never replaced
        raise ConfigError(f"data.root: {err}") from None


def train_sampling(dataset: Dataset, run: RunContext, *, epoch: int) -> tuple[Dataset, Sampler]:
    """The epoch's training items and this rank's share (:func:`s4v_data.order.training_order`)."""
    return training_order(
        dataset,
        seed=run.config.seed,
        epoch=epoch,
        rank=run.env.rank,
        world_size=run.env.world_size,
    )


def eval_sampler(dataset: Dataset, run: RunContext) -> Sampler:
    """This rank's share of an evaluation set, in order; every item is seen exactly once."""
    return evaluation_shard(dataset, rank=run.env.rank, world_size=run.env.world_size)


def eval_batch_size(config: RunConfig) -> int:
    return config.eval.batch_size or config.data.batch_size


def worker_options(config: RunConfig, *, persistent: bool = False) -> dict[str, Any]:
    """DataLoader keywords for ``data.num_workers`` (``auto`` resolved), the prefetch factor and
    persistent workers (both only meaningful with workers)."""
    workers = config.data.workers()
    return {
        "num_workers": workers,
        "prefetch_factor": config.data.prefetch_factor if workers else None,
        "persistent_workers": persistent and workers > 0,
    }
