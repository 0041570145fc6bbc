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
import torch.distributed as dist
from mlflow.exceptions import MlflowException
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from s4v_core.checkpoint import load_checkpoint, save_checkpoint
from s4v_orchestration.config import ConfigError, RunConfig, run_params, to_yaml
from s4v_orchestration.inference.loading import ModelLoadError
from s4v_orchestration.inference.pyfunc import log_pyfunc
from s4v_orchestration.progress import RunProgress
from s4v_orchestration.resume import (
    check_resumable,
    restore_rng_state,
    restore_training_state,
    rng_state,
)
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
from s4v_orchestration.tasks import RunContext, Task, TaskParts, get_task
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
    # The last step whose step metrics the continued MLflow run already holds (not saved): the
    # steps of an epoch cut short by an interruption are run again but logged once.
    logged_step: int = 0


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    """What a finished run produced (the CLI prints it; ``train()`` returns ``metrics``)."""

    metrics: dict[str, float]
    config: RunConfig
    run_id: str | None
    best_checkpoint: Path | None
    last_checkpoint: Path
    experiment_id: str | None = None  # the MLflow run's experiment (None without tracking)
    is_main: bool = True  # rank 0 (or not distributed): the process that reports the run


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


@dataclass(frozen=True, kw_only=True)
class _Run:
    """What the steps of one run share, fixed once the run is set up and resumed.

    The counters that change as the run goes (and that a checkpoint carries) are in
    :class:`TrainState`, which the steps take beside this.
    """

    context: RunContext  # config, built parts, device, process group: what the task's methods get
    task: Task
    precision: str
    ui: RunProgress
    model: nn.Module  # the bare model: checkpoints, validation and the final test use it
    ddp_model: nn.Module  # what trains: the model, wrapped in DDP when distributed
    trainable: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    # Built once and kept: with data.persistent_workers its workers stay up between validations.
    val_loader: DataLoader

    @property
    def config(self) -> RunConfig:
        return self.context.config

    @property
    def parts(self) -> TaskParts:
        return self.context.parts

    @property
    def device(self) -> torch.device:
        return self.context.device

    @property
    def env(self) -> DistEnv:
        return self.context.env

    @property
    def out_dir(self) -> Path:
        return Path(self.config.output_dir)

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def best_key(self) -> str:
        return f"val/{self.task.best_metric}"

    @property
    def log_path(self) -> Path:
        return self.out_dir / "train.log"


def _run(
    config: RunConfig,
    task: Task,
    device: torch.device,
    env: DistEnv,
    on_epoch_end: EpochCallback | None,
    progress: bool,
) -> TrainResult:
    """One run, step by step, on a device and process group already set up."""
    precision, ui = _set_up_runtime(config, device, env, progress)
    parts = _build_parts(config, task, env, ui)
    context = RunContext(config=config, parts=parts, device=device, env=env, track=ui.track)
    model = parts.model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = _steps_per_epoch(task, context)
    optimizer, scheduler, scaler = _build_optimization(
        config, task, model, device, precision, steps_per_epoch
    )

    state = TrainState()
    if config.resume is not None:
        state = _resume(config, parts, model, optimizer, scheduler, scaler, env)
        ui.note(f"resumed from {config.resume} after epoch {state.epoch} (step {state.step})")
    run = _Run(
        context=context,
        task=task,
        precision=precision,
        ui=ui,
        model=model,
        ddp_model=_distribute(model, device, env),
        trainable=trainable,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=scaler,
        steps_per_epoch=steps_per_epoch,
        val_loader=task.val_loader(context),
    )

    with _open_tracking(run, state) as tracker, ui:
        _start_tracking(run, state, tracker)
        _train_epochs(run, state, tracker, on_epoch_end)
        result = _final_metrics(run, state, tracker)

    return TrainResult(
        metrics=result,
        config=config,
        run_id=tracker.run_id,
        best_checkpoint=run.best_path if run.best_path.is_file() else None,
        last_checkpoint=run.last_path,
        experiment_id=tracker.experiment_id,
        is_main=env.is_main,
    )


# --- setting the run up -----------------------------------------------------------------------


def _set_up_runtime(
    config: RunConfig, device: torch.device, env: DistEnv, progress: bool
) -> tuple[str, RunProgress]:
    """CPU threads, the seed (one per rank), the precision the device runs and the progress UI."""
    if config.cpu_threads is not None:
        torch.set_num_threads(config.cpu_threads)
    seed_everything(config.seed + env.rank)
    precision = resolve_precision(config.solver.precision, device)
    return precision, RunProgress(enabled=progress and env.is_main)


def _build_parts(config: RunConfig, task: Task, env: DistEnv, ui: RunProgress) -> TaskParts:
    """The task's model and datasets, the same on every rank."""
    # Rank 0 prepares the data (e.g. generates the synthetic set) while the others wait, then
    # every rank builds the same model and datasets.
    if env.is_main:
        task.prepare_data(config, announce=ui.note)
    env.barrier()
    return task.build(config)


def _steps_per_epoch(task: Task, run: RunContext) -> int:
    """Optimizer steps in one epoch; at least one, or the run cannot start."""
    config, env = run.config, run.env
    accumulation = config.solver.grad_accumulation
    steps = len(task.train_loader(run, epoch=0)) // accumulation
    if steps == 0:
        raise ConfigError(
            f"the training set is too small for batch_size {config.data.batch_size} x "
            f"{env.world_size} processes x grad_accumulation {accumulation}: no full step per epoch"
        )
    return steps


def _build_optimization(
    config: RunConfig,
    task: Task,
    model: nn.Module,
    device: torch.device,
    precision: str,
    steps_per_epoch: int,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler, torch.amp.GradScaler]:
    """Optimizer, schedule and gradient scaler (fp16 only), all counted in optimizer steps."""
    solver = config.solver
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
    return optimizer, scheduler, scaler


def _distribute(model: nn.Module, device: torch.device, env: DistEnv) -> nn.Module:
    """The model in DDP when distributed; wrapped after resuming, as DDP copies rank 0's weights."""
    if not env.distributed:
        return model
    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None
    )


def _open_tracking(run: _Run, state: TrainState) -> contextlib.AbstractContextManager[Tracker]:
    """The MLflow run (rank 0 only), continuing the checkpoint's run on resume."""
    config = run.config
    return tracked_run(
        enabled=config.tracking.enabled and run.env.is_main,
        tracking_uri=config.tracking.uri,
        experiment=config.tracking.experiment,
        run_name=config.tracking.run_name or _run_name(config, run.env),
        tags=_tags(config, run.parts, run.env, run.precision, run.device),
        parent_run_id=config.tracking.parent_run_id,
        continue_run_id=state.run_id,
        system_metrics=config.tracking.system_metrics,
        primary_metric=run.best_key,
    )


def _start_tracking(run: _Run, state: TrainState, tracker: Tracker) -> None:
    """Write config.yaml, log the params (or tag the resumed run) and announce the run."""
    config = run.config
    state.run_id = tracker.run_id
    if run.env.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        (run.out_dir / "config.yaml").write_text(to_yaml(config))
        if tracker.continued:
            tracker.set_tags({"s4v.resumed_from": f"{config.resume} (epoch {state.epoch})"})
            state.logged_step = tracker.last_step("train/loss")
        else:
            params, tags = run_params(config)
            tracker.log_params(params)
            tracker.set_tags(tags)
            tracker.log_text(to_yaml(config), "config.yaml")
    run.ui.note(_describe_run(run, tracker))
    run.ui.start_epochs(config.solver.epochs, completed=state.epoch)


# --- the epochs -------------------------------------------------------------------------------


def _train_epochs(
    run: _Run, state: TrainState, tracker: Tracker, on_epoch_end: EpochCallback | None
) -> None:
    """The epochs from ``state.epoch`` on: train, validate when due, checkpoint and log each."""
    solver = run.config.solver
    first_epoch, session_started = state.epoch, time.perf_counter()
    for epoch in range(state.epoch, solver.epochs):
        started = time.perf_counter()
        metrics = _train_one_epoch(run, state, epoch, tracker)
        stopping = solver.max_steps is not None and state.step >= solver.max_steps
        if (epoch + 1) % run.config.eval.every == 0 or epoch + 1 == solver.epochs or stopping:
            metrics |= _validate(run)
        metrics["epoch/time_s"] = time.perf_counter() - started
        metrics["epoch/peak_mem_mb"] = peak_memory_mb(run.device)
        _end_epoch(run, state, epoch, metrics, tracker, on_epoch_end)
        if run.env.is_main:
            per_epoch = (time.perf_counter() - session_started) / (epoch + 1 - first_epoch)
            eta = 0.0 if stopping else per_epoch * (solver.epochs - epoch - 1)
            _report_epoch(run, epoch_line(epoch + 1, solver.epochs, metrics, eta))
        if stopping:
            run.ui.note(f"stopping after {state.step} steps (solver.max_steps)")
            break


def epoch_line(epoch: int, epochs: int, metrics: dict[str, float], eta_s: float) -> str:
    """``epoch 3/6  loss 0.9123  val/top1 75.00  val/top5 100.00  time 31 s  eta 1:33``."""
    parts = [f"epoch {epoch}/{epochs}", f"loss {metrics['train/epoch_loss']:.4f}"]
    parts += [f"{k} {v:.2f}" for k, v in metrics.items() if k.startswith("val/")]
    parts += [f"time {metrics['epoch/time_s']:.0f} s", f"eta {_clock(eta_s)}"]
    return "  ".join(parts)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _report_epoch(run: _Run, line: str) -> None:
    """The epoch's line on the terminal when it shows no bars, and always in ``train.log``."""
    run.ui.epoch_line(line)
    with run.log_path.open("a", encoding="utf-8") as log_file:
        log_file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")


def _validate(run: _Run) -> dict[str, float]:
    """Validation metrics over all ranks, prefixed ``val/``."""
    val = run.task.validate(run.model, run.val_loader, run.context)
    return {f"val/{k}": v for k, v in val.items()}


def _end_epoch(
    run: _Run,
    state: TrainState,
    epoch: int,
    metrics: dict[str, float],
    tracker: Tracker,
    on_epoch_end: EpochCallback | None,
) -> None:
    """Count the epoch, write ``last.pt`` (and ``best.pt``), log it and call ``on_epoch_end``."""
    state.epoch = epoch + 1
    state.last_metrics = metrics
    is_best = run.best_key in metrics and metrics[run.best_key] > state.best
    if is_best:
        state.best, state.best_epoch = metrics[run.best_key], state.epoch
    checkpoint = _checkpoint_state(run, state)
    if run.env.is_main:
        save_checkpoint(run.last_path, checkpoint)
        if is_best:
            save_checkpoint(run.best_path, checkpoint)
        tracker.log_metrics(metrics, step=state.epoch)
        run.ui.end_epoch(_epoch_summary(metrics, run.best_key))
        if on_epoch_end is not None:
            on_epoch_end(state.epoch, dict(metrics), run.last_path, tracker.run_id)


@dataclass(kw_only=True)
class _LossMeter:
    """Sums of the loss (one value per micro-batch) and of the clips seen since ``start``."""

    start: float  # time.perf_counter()
    loss: float = 0.0
    batches: int = 0
    clips: int = 0

    def add(self, loss: float, clips: int) -> None:
        self.loss += loss
        self.batches += 1
        self.clips += clips

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.batches, 1)

    def clips_per_s(self) -> float:
        return self.clips / max(time.perf_counter() - self.start, 1e-9)


def _train_one_epoch(
    run: _Run, state: TrainState, epoch: int, tracker: Tracker
) -> dict[str, float]:
    """One epoch of ``steps_per_epoch`` optimizer steps; returns its mean loss and throughput."""
    solver = run.config.solver
    accumulation = solver.grad_accumulation
    micro_batches = run.steps_per_epoch * accumulation
    loader = run.task.train_loader(run.context, epoch=epoch)
    run.ddp_model.train()
    now = time.perf_counter()
    total, window = _LossMeter(start=now), _LossMeter(start=now)
    description = f"epoch {epoch + 1}/{solver.epochs}"
    batches = run.ui.track(loader, micro_batches, description)
    for index, batch in enumerate(batches):
        if index >= micro_batches:
            break  # a last incomplete accumulation group is dropped, so every step is full
        last_micro_batch = (index + 1) % accumulation == 0
        loss, clips = _forward_backward(run, state, batch, epoch, last_micro_batch)
        total.add(loss, clips * run.env.world_size)
        window.add(loss, clips * run.env.world_size)
        if not last_micro_batch:
            continue

        lr = _optimizer_step(run, state)
        if state.step % run.config.tracking.log_every == 0 or state.step == 1:
            if state.step > state.logged_step:
                tracker.log_metrics(
                    {
                        "train/loss": window.mean_loss,
                        "train/lr": lr,
                        "train/clips_per_s": window.clips_per_s(),
                    },
                    step=state.step,
                )
            run.ui.set_info(description, f"loss {window.mean_loss:.3f}  lr {lr:.2e}")
            window = _LossMeter(start=time.perf_counter())
        if solver.max_steps is not None and state.step >= solver.max_steps:
            break
    return {
        "train/epoch_loss": total.mean_loss,
        "train/epoch_clips_per_s": total.clips_per_s(),
    }


def _forward_backward(
    run: _Run, state: TrainState, batch: Any, epoch: int, last_micro_batch: bool
) -> tuple[float, int]:
    """Loss and gradients of one micro-batch; returns the loss averaged over ranks and its clips.

    Raises:
        NonFiniteLossError: the loss is NaN or infinite on some rank.
    """
    # DDP averages gradients only on the micro-batch that ends an accumulation group.
    sync = (
        run.ddp_model.no_sync()
        if run.env.distributed and not last_micro_batch
        else contextlib.nullcontext()
    )
    with sync:
        with autocast(run.device, run.precision):
            loss, clips = run.task.loss(run.ddp_model, batch, run.context)
        global_loss = run.env.mean(loss.detach().float()).item()
        if not math.isfinite(global_loss):
            kept = (
                f"The last good checkpoint is {run.last_path} (after epoch {state.epoch})."
                if state.epoch > 0
                else "No epoch finished, so there is no checkpoint."
            )
            raise NonFiniteLossError(
                f"the training loss became {global_loss} at epoch {epoch + 1}, step "
                f"{state.step + 1}. {kept} Try a lower solver.lr, solver.clip_grad_norm=1.0 "
                "or solver.precision=fp32."
            )
        run.scaler.scale(loss / run.config.solver.grad_accumulation).backward()
    return global_loss, clips


def _optimizer_step(run: _Run, state: TrainState) -> float:
    """Clip, step the optimizer (through the scaler) and the schedule; returns the step's lr."""
    clip_grad_norm = run.config.solver.clip_grad_norm
    if clip_grad_norm is not None:
        run.scaler.unscale_(run.optimizer)
        torch.nn.utils.clip_grad_norm_(run.trainable, clip_grad_norm)
    lr = run.optimizer.param_groups[0]["lr"]
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.task.after_optimizer_step(run.model)
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    state.step += 1
    return lr


# --- checkpoints ------------------------------------------------------------------------------


def _checkpoint_state(run: _Run, state: TrainState) -> dict[str, Any]:
    """Everything needed to continue exactly; RNG states of every rank (a collective call)."""
    rng = run.env.all_gather(rng_state())
    return {
        "task": run.config.task,
        "config": run.config.model_dump(mode="json"),
        "backbone": run.parts.backbone_identity,
        "model": run.model.trainable_state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "world_size": run.env.world_size,
        "epoch": state.epoch,
        "step": state.step,
        "best": {"value": state.best, "epoch": state.best_epoch},
        "metrics": state.last_metrics,
        "mlflow_run_id": state.run_id,
        **run.parts.extra,
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
    model.load_trainable_state_dict(checkpoint["model"], source=str(path))
    restore_training_state(checkpoint, path, model, optimizer, scheduler, scaler)
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


# --- the end of the run -----------------------------------------------------------------------


def _final_metrics(run: _Run, state: TrainState, tracker: Tracker) -> dict[str, float]:
    """The last epoch's metrics, the best validation value, and the final test's if it runs."""
    result = dict(state.last_metrics)
    result[f"val/best_{run.task.best_metric}"] = state.best
    result["best_epoch"] = float(state.best_epoch)
    if run.config.eval.final_test:
        result |= _final_test(run, state, tracker)
    if run.env.is_main and run.config.tracking.log_checkpoint and run.best_path.is_file():
        tracker.log_artifact(run.best_path, "checkpoints")
    if run.env.is_main and tracker.enabled and run.config.tracking.log_model:
        _log_model(run, tracker)
    return result


def _log_model(run: _Run, tracker: Tracker) -> None:
    """The best checkpoint as the run's MLflow model (``runs:/<run_id>/model``)."""
    path = run.best_path if run.best_path.is_file() else run.last_path
    if not path.is_file():
        return
    started = time.perf_counter()
    try:
        log_pyfunc(path, run_id=tracker.run_id, tracking_uri=tracker.tracking_uri)
    except (MlflowException, ModelLoadError, OSError) as err:
        log.warning("could not log the MLflow model of %s: %s", path, err)
        return
    log.info("logged the MLflow model in %.1f s", time.perf_counter() - started)


def _final_test(run: _Run, state: TrainState, tracker: Tracker) -> dict[str, float]:
    """Test the best weights (the last ones if no epoch validated) and log the report files."""
    run.env.barrier()  # best.pt is complete on disk
    if run.best_path.is_file():
        run.model.load_trainable_state_dict(load_checkpoint(run.best_path)["model"])
    out_dir = run.out_dir / "eval"
    evaluation = run.task.final_test(run.model, run.context, out_dir)
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


def _tags(
    config: RunConfig, parts: TaskParts, env: DistEnv, precision: str, device: torch.device
) -> dict[str, str]:
    return {
        "s4v.task": config.task,
        "s4v.dataset": config.data.dataset,
        "s4v.backbone": str(parts.backbone_identity.get("name")),
        "s4v.pretrained": str(parts.backbone_identity.get("pretrained")),
        "s4v.preset": config.model.preset,
        "s4v.method": config.model.method,
        "s4v.world_size": str(env.world_size),
        "s4v.precision": precision,
        "s4v.device": _device_name(device),
        "s4v.dist_backend": dist.get_backend() if env.distributed else "none",
    }


def _device_name(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H100 80GB HBM3)``, ``cpu``: which card a run (or a Ray trial) got."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _describe_run(run: _Run, tracker: Tracker) -> str:
    config, parameters = run.config, list(run.parts.model.parameters())
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    total = sum(p.numel() for p in parameters)
    lines = [
        f"[bold]{config.task}[/bold] on [bold]{config.data.dataset}[/bold]: "
        f"{config.model.preset} ({config.model.method}), {_count(trainable)} of "
        f"{_count(total)} parameters trained",
        f"device {run.device} x {run.env.world_size}, precision {run.precision}, "
        f"{run.steps_per_epoch} steps per epoch, checkpoints in {config.output_dir}",
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
