"""The training loop: ``train(config) -> metrics``, explicit, the same for every task and sweep-agnostic.

Read top to bottom, one run is: resolve device and precision, join DDP when launched by
``torchrun``, prepare the data, build the model, optimizer (AdamW), warm-up + cosine schedule and
gradient scaler, resume from a checkpoint if asked, then for every epoch train, validate, write
``last.pt`` (and ``best.pt``), log to MLflow and call ``on_epoch_end``; finally test the best
weights with multi-view evaluation and log the report. The task-specific parts (data, model, loss,
evaluation) come from ``s4v_orchestration.tasks``; the Ray Tune trainable wraps :func:`train`.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from s4v_orchestration.checkpoint import (
    check_resumable,
    load_checkpoint,
    restore_rng_state,
    rng_state,
    save_checkpoint,
)
from s4v_orchestration.config import RunConfig, flatten, to_yaml
from s4v_orchestration.progress import RunProgress
from s4v_orchestration.runtime import (
    DistEnv,
    autocast,
    close_distributed,
    init_distributed,
    local_rank_from_env,
    peak_memory_mb,
    resolve_device,
    resolve_precision,
    seed_everything,
)
from s4v_orchestration.schedule import build_scheduler
from s4v_orchestration.tasks import Task, TaskParts, get_task
from s4v_orchestration.tracking import Tracker, tracked_run

log = logging.getLogger(__name__)

# on_epoch_end(epoch, metrics, checkpoint_path, mlflow_run_id), called after last.pt is written.
EpochCallback = Callable[[int, dict[str, float], Path, str | None], None]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass(kw_only=True)
class TrainState:
    """Counters that a checkpoint carries across an interruption."""

    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken
    best: float = -math.inf  # best validation value of the task's best metric
    best_epoch: int = 0
    run_id: str | None = None  # MLflow run to continue on resume
    last_metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a finished run produced (the CLI prints it; ``train()`` returns ``metrics``)."""

    metrics: dict[str, float]
    config: RunConfig
    run_id: str | None
    best_checkpoint: Path | None
    last_checkpoint: Path


def train(
    config: RunConfig, *, on_epoch_end: EpochCallback | None = None, progress: bool = False
) -> dict[str, float]:
    """Run one training job and return its final metrics.

    Args:
        config: the run configuration (``load_run_config`` builds one).
        on_epoch_end: called on rank 0 after each epoch's checkpoint is written with
            ``(epoch, metrics, checkpoint_path, mlflow_run_id)``; epochs count from 1.
        progress: show progress bars (rank 0 only).

    Returns:
        The last epoch's metrics (``train/loss``, ``val/top1``, ...), ``val/best_<metric>`` and
        ``best_epoch``, and the final test's ``test/...`` metrics.
    """
    return run_training(config, on_epoch_end=on_epoch_end, progress=progress).metrics


def run_training(
    config: RunConfig, *, on_epoch_end: EpochCallback | None = None, progress: bool = False
) -> TrainResult:
    """:func:`train`, returning also the MLflow run id and the checkpoint paths."""
    config = config.with_defaults()
    task = get_task(config.task)
    device = resolve_device(config.device, local_rank_from_env())
    env = init_distributed(device)
    try:
        return _run(config, task, device, env, on_epoch_end, progress)
    finally:
        close_distributed(env)


def _run(
    config: RunConfig,
    task: Task,
    device: torch.device,
    env: DistEnv,
    on_epoch_end: EpochCallback | None,
    progress: bool,
) -> TrainResult:
    solver = config.solver
    if config.cpu_threads is not None:
        torch.set_num_threads(config.cpu_threads)
    seed_everything(config.seed + env.rank)
    precision = resolve_precision(solver.precision, device)
    out_dir = Path(config.output_dir)
    ui = RunProgress(enabled=progress and env.is_main)

    # Data and model. Rank 0 prepares the data (e.g. generates the synthetic set) while the
    # others wait, then every rank builds the same model and datasets.
    if env.is_main:
        task.prepare_data(config, announce=ui.note)
    env.barrier()
    parts = task.build(config)
    model = parts.model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    # Optimizer, schedule and gradient scaler (fp16 only), all counted in optimizer steps.
    accumulation = solver.grad_accumulation
    steps_per_epoch = len(task.train_loader(parts, config, epoch=0, env=env)) // accumulation
    if steps_per_epoch == 0:
        raise ValueError(
            f"the training set is too small for batch_size {config.data.batch_size} x "
            f"{env.world_size} processes x grad_accumulation {accumulation}: no full step per epoch"
        )
    # A task may split the parameters into groups with their own learning rates (retrieval's
    # trainable text tower); by default everything trains at solver.lr.
    groups = task.parameter_groups(model, config)
    optimizer = torch.optim.AdamW(
        groups,
        lr=solver.lr,
        betas=solver.betas,
        eps=solver.eps,
        weight_decay=solver.weight_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        warmup_steps=round(solver.warmup_epochs * steps_per_epoch),
        total_steps=solver.epochs * steps_per_epoch,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    state = TrainState()
    if config.resume is not None:
        state = _resume(config, parts, model, optimizer, scheduler, scaler, env)
        ui.note(f"resumed from {config.resume} after epoch {state.epoch} (step {state.step})")
    ddp_model = (
        DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        if env.distributed
        else model
    )

    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    best_key = f"val/{task.best_metric}"
    with (
        tracked_run(
            enabled=config.tracking.enabled and env.is_main,
            tracking_uri=config.tracking.uri,
            experiment=config.tracking.experiment,
            run_name=config.tracking.run_name or _run_name(config, env),
            tags=_tags(config, parts, env, precision),
            parent_run_id=config.tracking.parent_run_id,
            continue_run_id=state.run_id,
            system_metrics=config.tracking.system_metrics,
        ) as tracker,
        ui,
    ):
        state.run_id = tracker.run_id
        if env.is_main:
            out_dir.mkdir(parents=True, exist_ok=True)
            (out_dir / "config.yaml").write_text(to_yaml(config))
            if tracker.continued:
                tracker.set_tags({"s4v.resumed_from": f"{config.resume} (epoch {state.epoch})"})
            else:
                tracker.log_params(flatten(config))
                tracker.log_text(to_yaml(config), "config.yaml")
        ui.note(_describe_run(config, parts, device, precision, env, steps_per_epoch, tracker))
        ui.start_epochs(solver.epochs, completed=state.epoch)

        for epoch in range(state.epoch, solver.epochs):
            started = time.perf_counter()
            loader = task.train_loader(parts, config, epoch=epoch, env=env)
            train_metrics = _train_one_epoch(
                ddp_model, task, loader, optimizer, scheduler, scaler, trainable,
                config=config, device=device, precision=precision, env=env, state=state,
                steps=steps_per_epoch, epoch=epoch, tracker=tracker, ui=ui,
            )  # fmt: skip
            stopping = solver.max_steps is not None and state.step >= solver.max_steps
            metrics = dict(train_metrics)
            if (epoch + 1) % config.eval.every == 0 or epoch + 1 == solver.epochs or stopping:
                val_loader = task.val_loader(parts, config, env=env)
                val = task.validate(model, val_loader, device, env, track=ui.track)
                metrics |= {f"val/{k}": v for k, v in val.items()}
            metrics["epoch/time_s"] = time.perf_counter() - started
            metrics["epoch/peak_mem_mb"] = peak_memory_mb(device)

            state.epoch = epoch + 1
            state.last_metrics = metrics
            is_best = best_key in metrics and metrics[best_key] > state.best
            if is_best:
                state.best, state.best_epoch = metrics[best_key], state.epoch
            checkpoint = _checkpoint_state(
                config, parts, model, optimizer, scheduler, scaler, state, env
            )
            if env.is_main:
                save_checkpoint(last_path, checkpoint)
                if is_best:
                    save_checkpoint(best_path, checkpoint)
                tracker.log_metrics(metrics, step=state.epoch)
                ui.end_epoch(_epoch_summary(metrics, best_key))
                if on_epoch_end is not None:
                    on_epoch_end(state.epoch, dict(metrics), last_path, tracker.run_id)
            if stopping:
                ui.note(f"stopping after {state.step} steps (solver.max_steps)")
                break

        result = dict(state.last_metrics)
        result[f"val/best_{task.best_metric}"] = state.best
        result["best_epoch"] = float(state.best_epoch)
        if config.eval.final_test:
            result |= _final_test(
                config, task, parts, model, device, env, best_path, tracker, ui, state
            )
        if env.is_main and config.tracking.log_checkpoint and best_path.is_file():
            tracker.log_artifact(best_path, "checkpoints")

    return TrainResult(
        metrics=result,
        config=config,
        run_id=tracker.run_id,
        best_checkpoint=best_path if best_path.is_file() else None,
        last_checkpoint=last_path,
    )


def _train_one_epoch(
    model: nn.Module,
    task: Task,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    trainable: list[nn.Parameter],
    *,
    config: RunConfig,
    device: torch.device,
    precision: str,
    env: DistEnv,
    state: TrainState,
    steps: int,
    epoch: int,
    tracker: Tracker,
    ui: RunProgress,
) -> dict[str, float]:
    """One epoch of ``steps`` optimizer steps; returns the epoch's mean loss and throughput."""
    solver = config.solver
    accumulation = solver.grad_accumulation
    model.train()
    epoch_loss, epoch_batches, epoch_clips = 0.0, 0, 0
    window_loss, window_batches, window_clips = 0.0, 0, 0
    window_start = epoch_start = time.perf_counter()
    description = f"epoch {epoch + 1}/{solver.epochs}"
    batches = ui.track(loader, steps * accumulation, description)
    for index, batch in enumerate(batches):
        if index >= steps * accumulation:
            break  # a last incomplete accumulation group is dropped, so every step is full
        last_micro_batch = (index + 1) % accumulation == 0
        # DDP averages gradients only on the micro-batch that ends an accumulation group.
        sync = (
            model.no_sync()
            if env.distributed and not last_micro_batch
            else contextlib.nullcontext()
        )
        with sync:
            with autocast(device, precision):
                loss, clips = task.loss(model, batch, device)
            global_loss = env.mean(loss.detach().float()).item()
            if not math.isfinite(global_loss):
                raise NonFiniteLossError(
                    f"the training loss became {global_loss} at epoch {epoch + 1}, step "
                    f"{state.step + 1}. The last good checkpoint is "
                    f"{Path(config.output_dir) / 'last.pt'} (after epoch {state.epoch}). Try a "
                    "lower solver.lr, solver.clip_grad_norm=1.0 or solver.precision=fp32."
                )
            scaler.scale(loss / accumulation).backward()
        epoch_loss += global_loss
        window_loss += global_loss
        epoch_batches += 1
        window_batches += 1
        epoch_clips += clips * env.world_size
        window_clips += clips * env.world_size
        if not last_micro_batch:
            continue

        if solver.clip_grad_norm is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, solver.clip_grad_norm)
        lr = optimizer.param_groups[0]["lr"]
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        state.step += 1

        if state.step % config.tracking.log_every == 0 or state.step == 1:
            elapsed = time.perf_counter() - window_start
            tracker.log_metrics(
                {
                    "train/loss": window_loss / window_batches,
                    "train/lr": lr,
                    "train/clips_per_s": window_clips / max(elapsed, 1e-9),
                },
                step=state.step,
            )
            ui.set_info(description, f"loss {window_loss / window_batches:.3f}  lr {lr:.2e}")
            window_loss, window_batches, window_clips = 0.0, 0, 0
            window_start = time.perf_counter()
        if solver.max_steps is not None and state.step >= solver.max_steps:
            break
    elapsed = time.perf_counter() - epoch_start
    return {
        "train/epoch_loss": epoch_loss / max(epoch_batches, 1),
        "train/epoch_clips_per_s": epoch_clips / max(elapsed, 1e-9),
    }


def _checkpoint_state(
    config: RunConfig,
    parts: TaskParts,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    state: TrainState,
    env: DistEnv,
) -> dict[str, Any]:
    """Everything needed to continue exactly; RNG states of every rank (a collective call)."""
    rng = env.all_gather(rng_state())
    return {
        "task": config.task,
        "config": config.model_dump(mode="json"),
        "backbone": parts.backbone_identity,
        "model": model.trainable_state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng,
        "world_size": env.world_size,
        "epoch": state.epoch,
        "step": state.step,
        "best": {"value": state.best, "epoch": state.best_epoch},
        "metrics": state.last_metrics,
        "mlflow_run_id": state.run_id,
        **parts.extra,
    }


def _resume(
    config: RunConfig,
    parts: TaskParts,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    env: DistEnv,
) -> TrainState:
    """Load a checkpoint into the model and training state after checking it belongs here."""
    path = Path(config.resume)
    checkpoint = load_checkpoint(path)
    check_resumable(checkpoint, path, config.model_dump(mode="json"), parts.backbone_identity)
    model.load_trainable_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    scaler.load_state_dict(checkpoint["scaler"])
    if checkpoint["world_size"] == env.world_size:
        restore_rng_state(checkpoint["rng"][env.rank])
    else:
        log.warning(
            "resuming with %d processes from a checkpoint of %d: random streams restart",
            env.world_size,
            checkpoint["world_size"],
        )
    return TrainState(
        epoch=checkpoint["epoch"],
        step=checkpoint["step"],
        best=checkpoint["best"]["value"],
        best_epoch=checkpoint["best"]["epoch"],
        run_id=checkpoint.get("mlflow_run_id") if config.tracking.enabled else None,
        last_metrics=dict(checkpoint["metrics"]),
    )


def _final_test(
    config: RunConfig,
    task: Task,
    parts: TaskParts,
    model: nn.Module,
    device: torch.device,
    env: DistEnv,
    best_path: Path,
    tracker: Tracker,
    ui: RunProgress,
    state: TrainState,
) -> dict[str, float]:
    """Test the best weights (the last ones if no epoch validated) and log the report files."""
    env.barrier()  # best.pt is complete on disk
    if best_path.is_file():
        model.load_trainable_state_dict(load_checkpoint(best_path)["model"])
    out_dir = Path(config.output_dir) / "eval"
    evaluation = task.final_test(model, config, parts, device, env, out_dir, track=ui.track)
    metrics = {f"test/{k}": v for k, v in evaluation.metrics.items()}
    tracker.log_metrics(metrics, step=state.epoch)
    for path in evaluation.files:
        tracker.log_artifact(path, "eval")
    return metrics


def _run_name(config: RunConfig, env: DistEnv) -> str:
    global_batch = config.data.batch_size * env.world_size * config.solver.grad_accumulation
    return (
        f"{config.data.dataset} {config.model.preset} {config.model.method} "
        f"lr={config.solver.lr:g} bs={global_batch} ep={config.solver.epochs}"
    )


def _tags(config: RunConfig, parts: TaskParts, env: DistEnv, precision: str) -> dict[str, str]:
    return {
        "s4v.task": config.task,
        "s4v.dataset": config.data.dataset,
        "s4v.backbone": str(parts.backbone_identity.get("name")),
        "s4v.pretrained": str(parts.backbone_identity.get("pretrained")),
        "s4v.preset": config.model.preset,
        "s4v.method": config.model.method,
        "s4v.world_size": str(env.world_size),
        "s4v.precision": precision,
    }


def _describe_run(
    config: RunConfig,
    parts: TaskParts,
    device: torch.device,
    precision: str,
    env: DistEnv,
    steps_per_epoch: int,
    tracker: Tracker,
) -> str:
    trainable = sum(p.numel() for p in parts.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in parts.model.parameters())
    lines = [
        f"[bold]{config.task}[/bold] on [bold]{config.data.dataset}[/bold]: "
        f"{config.model.preset} ({config.model.method}), {_count(trainable)} of "
        f"{_count(total)} parameters trained",
        f"device {device} x {env.world_size}, precision {precision}, "
        f"{steps_per_epoch} steps per epoch, checkpoints in {config.output_dir}",
    ]
    if tracker.run_id is not None:
        lines.append(f"MLflow run {tracker.run_id} in {config.tracking.uri}")
    return "\n".join(lines)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 100_000 else f"{n / 1e3:.1f} k"


def _epoch_summary(metrics: dict[str, float], best_key: str) -> str:
    text = f"loss {metrics['train/epoch_loss']:.3f}"
    if best_key in metrics:
        text += f"  {best_key} {metrics[best_key]:.1f}"
    return text
