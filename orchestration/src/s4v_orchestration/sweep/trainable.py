"""The Ray Tune trainable: a thin wrapper that runs ``train(config)`` for one trial and reports.

Each trial builds its run config from the sweep's base config plus its sampled values, logs to
MLflow as a nested child of the sweep's parent run (``train()`` does the logging), and reports
after every epoch with the epoch's checkpoint, so that ASHA can stop it and Ray can resume it.

The final epoch is reported only after ``train()`` returns: a scheduler stops a trial as soon as
it reports its final epoch, which would kill ``train()`` before it tests the model and closes its
MLflow run.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ray import tune

from s4v_orchestration.config import RunConfig
from s4v_orchestration.sweep.space import EPOCH_KEY
from s4v_orchestration.tracking import RunStopped

# Extra keys every trial report carries besides the run's own metrics.
EPOCHS_KEY = "epochs"  # epochs the trial was configured to run (tells "completed" from "stopped")
RUN_ID_KEY = "mlflow_run_id"
# Name of the model file inside each Ray checkpoint directory.
CHECKPOINT_FILE = "checkpoint.pt"


class TrialConfigError(ValueError):
    """A sampled value the run config rejects (the trial fails; the sweep goes on)."""


def set_path(tree: dict[str, Any], path: str, value: Any) -> None:
    """Set ``tree["a"]["b"] = value`` for ``path = "a.b"``; sections must already exist."""
    *parents, leaf = path.split(".")
    node = tree
    for depth, part in enumerate(parents):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(parents[: depth + 1])
            what = "no such section" if child is None else "a value, not a section"
            raise TrialConfigError(f"{path}: {where} is {what}")
        node = child
    node[leaf] = value


def apply_values(base: RunConfig, values: dict[str, Any]) -> RunConfig:
    """The base config with ``values`` (dotted path -> value) set, validated again."""
    tree = base.model_dump(mode="json")
    for path, value in values.items():
        set_path(tree, path, value)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: "
            + ("unknown field" if e["type"] == "extra_forbidden" else e["msg"])
            for e in exc.errors()
        )
        raise TrialConfigError(f"{problems} (setting {values})") from None


def trial_run_name(trial_id: str) -> str:
    """MLflow run name of a trial's child run (unique within a sweep, stable across resumes)."""
    return f"trial-{trial_id}"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialContext:
    """What every trial of one sweep shares (passed to the trainable with ``tune.with_parameters``)."""

    base_config: dict[str, Any]  # RunConfig as JSON-able dict: preset, file and `set` applied
    metric: str  # the sweep's metric; every report carries it
    tracking_uri: str
    experiment: str
    parent_run_id: str


class MetricNotReportedError(KeyError):
    """The sweep's metric is not among the metrics a validated epoch produced."""


class TrialStopped(RunStopped):
    """The scheduler stopped this trial.

    Ray ends a stopped trial by raising ``SystemExit`` inside ``tune.report``. ``train()`` would
    record that as a failed run; a :class:`RunStopped` passes through ``train()`` like Ctrl-C and
    closes its MLflow run FINISHED (the driver tags it ``stopped_early``).
    """


@dataclass(kw_only=True, slots=True)
class _Report:
    epoch: int
    metrics: dict[str, float]
    checkpoint: Path
    run_id: str | None


def _send(report: _Report, *, planned: int) -> None:
    result = {
        **report.metrics,
        EPOCH_KEY: report.epoch,
        EPOCHS_KEY: planned,
        RUN_ID_KEY: report.run_id or "",
    }
    with tempfile.TemporaryDirectory(prefix="s4v-ckpt-") as folder:
        # Ray copies the folder into its storage before report() returns.
        shutil.copyfile(report.checkpoint, Path(folder) / CHECKPOINT_FILE)
        tune.report(result, checkpoint=tune.Checkpoint.from_directory(folder))


def run_trial(params: dict[str, Any], *, context: TrialContext) -> None:
    """Ray Tune function trainable: one ``train()`` run with this trial's sampled ``params``.

    Reports every epoch that was validated (Ray requires the metric in every report); the last
    one after ``train()`` returns, with train()'s final metrics (``test/...``) added.
    """
    from s4v_orchestration.train import train  # heavy (torch); imported in the trial process only

    trial_id = tune.get_context().get_trial_id()
    config = apply_values(RunConfig.model_validate(context.base_config), params)
    # Ray runs each trial in a working directory of its own; train() writes last.pt there.
    output_dir = Path.cwd() / f"s4v-{trial_id}"
    output_dir.mkdir(parents=True, exist_ok=True)
    config.output_dir = output_dir
    config.tracking.enabled = True
    config.tracking.uri = context.tracking_uri
    config.tracking.experiment = context.experiment
    config.tracking.parent_run_id = context.parent_run_id
    config.tracking.run_name = trial_run_name(trial_id)

    restored = tune.get_checkpoint()
    if restored is not None:
        # A resumed sweep or a retried failure: continue from Ray's copy of the last epoch.
        with restored.as_directory() as folder:
            resume = output_dir / "resume.pt"
            shutil.copyfile(Path(folder) / CHECKPOINT_FILE, resume)
        config.resume = resume

    planned = config.solver.epochs
    every = config.eval.every
    latest: list[_Report] = []  # the last validated epoch (the final one is held back)

    def on_epoch_end(epoch: int, metrics: dict[str, float], checkpoint: Path, run_id: str | None):
        if context.metric not in metrics:
            if epoch % every == 0 or epoch >= planned:
                raise MetricNotReportedError(
                    f"the sweep's metric {context.metric!r} is not among this run's metrics "
                    f"({', '.join(sorted(metrics))}); set `metric:` in the sweep file"
                )
            return
        # train() writes no checkpoint after its last epoch, so `checkpoint` (last.pt) still
        # holds this epoch when the held-back report is sent.
        latest[:] = [
            _Report(epoch=epoch, metrics=dict(metrics), checkpoint=checkpoint, run_id=run_id)
        ]
        if epoch < planned:
            try:
                _send(latest[0], planned=planned)
            except SystemExit:
                raise TrialStopped(f"stopped by the scheduler after epoch {epoch}") from None

    try:
        final = train(config, on_epoch_end=on_epoch_end)
    except TrialStopped:
        raise SystemExit(0) from None  # what Ray's trial thread expects when it stops a trial
    if latest:
        last = latest[0]
        last.metrics |= {k: v for k, v in final.items() if k not in last.metrics}
        # The trial ran to its end (also when solver.max_steps ended it early): the final report
        # says so by planned == epoch, which tells "completed" from "stopped by the scheduler".
        _send(last, planned=last.epoch)
