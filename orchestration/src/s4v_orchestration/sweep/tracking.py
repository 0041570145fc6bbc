"""MLflow bookkeeping of a sweep: one parent run per sweep, one nested child run per trial.

The children are created by ``train()`` inside the trials (``tracking.parent_run_id`` makes them
nested). Everything here runs in the driver, one call at a time: preparing the store, the
parent run, and marking each child with how its trial ended, because a trial stopped by the
scheduler is killed mid-training and cannot close its own run.

Several trials writing to one SQLite file at once is safe once the database exists: SQLite takes one
writer at a time and MLflow sets a 20 s busy timeout on every session, so writers queue instead of
failing. What is not safe is several processes creating the schema at once (mlflow#4123), so the
driver creates the store, the experiment and the parent run before any trial starts.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from mlflow import MlflowClient
from mlflow.entities import Metric, Run, RunStatus
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from s4v_orchestration.sweep.spec import Distribution, SweepSpec

logger = logging.getLogger(__name__)

TrialState = Literal["completed", "stopped_early", "failed", "unfinished"]

# Tags on the parent run.
TAG_KIND = "s4v.kind"
TAG_SWEEP = "s4v.sweep"
TAG_METRIC = "s4v.sweep.metric"
TAG_MODE = "s4v.sweep.mode"
TAG_SEARCHED = "s4v.sweep.searched_paths"
TAG_STORAGE = "s4v.sweep.storage"
TAG_FILE_SHA256 = "s4v.sweep.file_sha256"
TAG_STATE = "s4v.sweep.state"
TAG_BEST_TRIAL = "s4v.sweep.best_trial"
TAG_BEST_RUN = "s4v.sweep.best_run_id"
TAG_BEST_CHECKPOINT = "s4v.sweep.best_checkpoint"
# Tags on each child run.
TAG_TRIAL_ID = "s4v.trial.id"
TAG_TRIAL_STATE = "s4v.trial.state"
TAG_TRIAL_EPOCHS = "s4v.trial.epochs_completed"
TAG_TRIAL_ERROR = "s4v.trial.error"

_ERROR_CHARS = 4000  # MLflow caps a tag at 8000 characters


def normalise_tracking_uri(uri: str) -> str:
    """Make a relative ``sqlite:///file.db`` absolute: trials run in other working directories."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri.removeprefix(prefix)).resolve())
    return uri


def is_server_uri(uri: str) -> bool:
    """True for a tracking server that trials on other machines can reach (http/https)."""
    return urlparse(uri).scheme in ("http", "https")


def describe(dist: Distribution) -> str:
    """``loguniform(0.0001, 0.1)``: a distribution in one readable line for params and tables."""
    fields = dist.model_dump(exclude={"type"})
    if "values" in fields:
        return f"{dist.type}({', '.join(map(str, fields['values']))})"
    return f"{dist.type}({fields['low']}, {fields['high']})"


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialOutcome:
    """How one trial ended, as recorded in MLflow and printed in the final table."""

    trial_id: str
    run_name: str
    state: TrialState
    params: dict[str, Any]  # the searched config paths and the values this trial used
    metrics: dict[str, float] = field(default_factory=dict)  # last reported epoch
    epochs_completed: int = 0
    mlflow_run_id: str | None = None
    checkpoint: str | None = None  # file of the trial's best checkpoint in Ray storage
    error: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepRecord:
    """What a resumed sweep needs to find its MLflow runs again (saved next to Ray's state)."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    sweep_sha256: str

    def save(self, path: Path) -> None:
        path.write_text(json.dumps({k: getattr(self, k) for k in self.__slots__}, indent=2))

    @classmethod
    def load(cls, path: Path) -> SweepRecord:
        return cls(**json.loads(path.read_text()))


def error_summary(error: str) -> str:
    """The last line of a traceback (``ValueError: ...``), for a tag and a table cell."""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else error)[:_ERROR_CHARS]


def start_parent_run(
    client: MlflowClient,
    *,
    experiment_id: str,
    spec: SweepSpec,
    sweep_text: str,
    storage: str,
    sweep_sha256: str = "",
) -> str:
    """Create the sweep's parent run with the sweep file and its search space; returns its id."""
    metric, mode = spec.objective
    tags = {
        MLFLOW_RUN_NAME: spec.name,
        TAG_KIND: "sweep",
        TAG_SWEEP: spec.name,
        TAG_METRIC: metric,
        TAG_MODE: mode,
        TAG_SEARCHED: ",".join(spec.search_space),
        TAG_STORAGE: storage,
        TAG_FILE_SHA256: sweep_sha256,
        TAG_STATE: "running",
    }
    run = client.create_run(experiment_id, run_name=spec.name, tags=tags)
    run_id = run.info.run_id
    params = {
        "sweep.task": spec.task,
        "sweep.dataset": spec.dataset,
        "sweep.metric": metric,
        "sweep.mode": mode,
        "sweep.num_samples": spec.num_samples,
        "sweep.scheduler": spec.scheduler.type,
        "sweep.search_algorithm": spec.search.algorithm,
        "sweep.resources.cpu": spec.resources.cpu,
        "sweep.resources.gpu": spec.resources.gpu,
        **{f"space.{path}": describe(dist) for path, dist in spec.search_space.items()},
        **{f"set.{path}": value for path, value in spec.set.items()},
    }
    for key, value in params.items():
        client.log_param(run_id, key, value)
    client.log_text(run_id, sweep_text, "sweep.yaml")
    client.log_dict(
        run_id,
        {path: dist.model_dump() for path, dist in spec.search_space.items()},
        "search_space.json",
    )
    return run_id


def find_parent_by_storage(client: MlflowClient, storage: str) -> Run | None:
    """The newest sweep parent run whose Ray experiment folder is ``storage``."""
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`{TAG_KIND}` = 'sweep' and tags.`{TAG_STORAGE}` = '{storage}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0] if runs else None


def reopen_parent_run(client: MlflowClient, run_id: str) -> None:
    """Mark a resumed sweep's parent as running again."""
    client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
    client.set_tag(run_id, TAG_STATE, "running")


def find_child_run(
    client: MlflowClient, *, experiment_id: str, parent_run_id: str, run_name: str
) -> str | None:
    """The newest child of the parent with this run name, or None if the trial never made one."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=(
            f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}' "
            f"and attributes.run_name = '{run_name}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


def record_trial(
    client: MlflowClient, *, experiment_id: str, parent_run_id: str, outcome: TrialOutcome
) -> str | None:
    """Tag the trial's child run with how it ended and close it if the trial could not.

    A failed trial that died before ``train()`` created its run gets a child run of its own, so
    every trial of the sweep appears under the parent. Safe to call again for the same trial.
    Returns the child run id (None for an unfinished trial without a run).
    """
    run_id = outcome.mlflow_run_id or find_child_run(
        client, experiment_id=experiment_id, parent_run_id=parent_run_id, run_name=outcome.run_name
    )
    if run_id is None:
        if outcome.state != "failed":
            return None
        run_id = client.create_run(
            experiment_id,
            run_name=outcome.run_name,
            tags={MLFLOW_PARENT_RUN_ID: parent_run_id, MLFLOW_RUN_NAME: outcome.run_name},
        ).info.run_id
    run = client.get_run(run_id)
    for key, value in outcome.params.items():
        if key not in run.data.params:
            client.log_param(run_id, key, value)
    client.set_tag(run_id, TAG_TRIAL_ID, outcome.trial_id)
    client.set_tag(run_id, TAG_TRIAL_STATE, outcome.state)
    client.set_tag(run_id, TAG_TRIAL_EPOCHS, str(outcome.epochs_completed))
    if outcome.error:
        client.set_tag(run_id, TAG_TRIAL_ERROR, error_summary(outcome.error))
        client.log_text(run_id, outcome.error, "error.txt")
    status = run.info.status
    # A trial stopped by the scheduler did not fail and was not interrupted: it ended FINISHED,
    # as train() also records it, and the state tag (stopped_early) says how.
    wanted = {"failed": "FAILED", "stopped_early": "FINISHED", "completed": "FINISHED"}.get(
        outcome.state
    )
    if outcome.state == "completed" and status != "RUNNING":
        wanted = None  # train() closed it; keep what it recorded
    if wanted is not None and status != wanted:
        client.set_terminated(run_id, wanted)
    return run_id


def tidy_trial_runs(
    client: MlflowClient, *, experiment_id: str, parent_run_id: str, finished: bool
) -> None:
    """Leave one current run per trial.

    A trial restarted without a checkpoint (after Ctrl-C, a crash or a retried failure) logs to a
    new run: the older runs of that trial are tagged ``superseded`` (and closed). Once the sweep
    has finished, a run still RUNNING belonged to a trial killed with an earlier driver. When the
    sweep was interrupted, a trial run closed FINISHED without an outcome (Tune stopped it as the
    scheduler would, so ``train()`` closed it) is tagged ``unfinished`` and ends KILLED; one still
    RUNNING is left for ``--resume``.
    """
    children = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    seen: set[str] = set()
    for run in children:
        stale = run.info.run_name in seen
        seen.add(run.info.run_name)
        if stale:
            client.set_tag(run.info.run_id, TAG_TRIAL_STATE, "superseded")
        elif (
            not finished and run.info.status == "FINISHED" and TAG_TRIAL_STATE not in run.data.tags
        ):
            client.set_tag(run.info.run_id, TAG_TRIAL_STATE, "unfinished")
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))
            continue
        elif not (finished and run.info.status == "RUNNING"):
            continue
        else:
            client.set_tag(run.info.run_id, TAG_TRIAL_STATE, "abandoned")
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, RunStatus.to_string(RunStatus.KILLED))


def finish_parent_run(
    client: MlflowClient,
    *,
    parent_run_id: str,
    best: TrialOutcome | None,
    best_config: dict[str, Any] | None,
    interrupted: bool,
) -> None:
    """Log the best trial (its metrics under the same names, its config and checkpoint), then end
    the parent run: FINISHED, or KILLED if the sweep was interrupted and can be resumed."""
    if best is not None:
        client.set_tag(parent_run_id, TAG_BEST_TRIAL, best.trial_id)
        if best.mlflow_run_id:
            client.set_tag(parent_run_id, TAG_BEST_RUN, best.mlflow_run_id)
        if best.checkpoint:
            client.set_tag(parent_run_id, TAG_BEST_CHECKPOINT, best.checkpoint)
        for path, value in best.params.items():
            client.set_tag(parent_run_id, f"best.{path}", str(value))
        # At the best trial's epoch, where its own curve has the point (a step-0 point would
        # stand alone at the left of every chart).
        now = int(time.time() * 1000)
        step = best.epochs_completed
        client.log_batch(
            parent_run_id,
            metrics=[Metric(key, value, now, step) for key, value in best.metrics.items()],
        )
        client.log_dict(
            parent_run_id,
            {
                "trial_id": best.trial_id,
                "mlflow_run_id": best.mlflow_run_id,
                "checkpoint": best.checkpoint,
                "params": best.params,
                "metrics": best.metrics,
                "config": best_config,
            },
            "best_trial.json",
        )
    client.set_tag(parent_run_id, TAG_STATE, "interrupted" if interrupted else "finished")
    status = RunStatus.KILLED if interrupted else RunStatus.FINISHED
    client.set_terminated(parent_run_id, RunStatus.to_string(status))
