"""MLflow tracking for one run: create (or continue) it, log to it, and always close it.

Uses an explicit ``MlflowClient`` bound to the configured tracking URI rather than MLflow's global
"active run", so several runs in one process (tests, sweeps) never leak into each other. A run that
raises ends ``FAILED``; Ctrl-C (``KeyboardInterrupt``) ends ``KILLED``; no run is left ``RUNNING``.
"""

from __future__ import annotations

import fcntl
import getpass
import logging
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy.exc
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils.mlflow_tags import (
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER,
    MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME,
)

from s4v_orchestration import __version__
from s4v_orchestration.paths import default_tracking_uri

log = logging.getLogger(__name__)

SYSTEM_METRICS_INTERVAL_S = 5.0


def git_commit() -> str | None:
    """Commit of the s4v source tree this code runs from, or None outside a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


UI_ADDRESS = "http://127.0.0.1:5000"  # where `s4v ui` serves by default


def ui_command(tracking_uri: str) -> str:
    """The shell command that opens the MLflow UI on this store (``s4v ui``)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    if tracking_uri == default_tracking_uri():
        return "s4v ui"
    return f"s4v ui --tracking-uri {tracking_uri}"


# MLflow 3.17's UI picks GenAI or model-training pages by a switch of its own (remembered in the
# browser, GenAI at first) rather than by the experiment's kind tag; this query parameter selects
# model training for the page it opens.
MODEL_TRAINING_VIEW = "workflowType=machine_learning"


def _ui_base(tracking_uri: str) -> str:
    base = tracking_uri if tracking_uri.startswith(("http://", "https://")) else UI_ADDRESS
    return base.rstrip("/")


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page in the MLflow UI: on the tracking server, or where ``s4v ui`` serves."""
    return f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_VIEW}"


def experiment_url(tracking_uri: str, experiment_id: str, metric: str | None = None) -> str:
    """The experiment's runs table in the MLflow UI, sorted by ``metric`` (largest first).

    The sort is the one default of the table MLflow takes from the address; the columns shown
    are the browser's choice (MLflow keeps them in local storage), not the store's.
    """
    url = f"{_ui_base(tracking_uri)}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_VIEW}"
    if metric is not None:
        url += f"&orderByKey={quote(f'metrics.`{metric}`', safe='')}&orderByAsc=false"
    return url


class TrackingStoreError(RuntimeError):
    """The MLflow store cannot be opened; the message names it and says what to do."""


def _sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` store; None for any other store (or in memory)."""
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    path = tracking_uri[len(prefix) :].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


@contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """An inter-process lock on a SQLite store, so that only one process creates its schema.

    The lock file sits beside the database (``.<name>.lock``), so that processes on other
    machines sharing the folder see it too. Other stores need no lock (their servers create it).
    """
    path = _sqlite_path(tracking_uri)
    if path is None or not path.parent.is_dir():
        yield  # a missing folder is MLflow's to report
        return
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_client(tracking_uri: str) -> MlflowClient:
    """A client on the store, the store created (a new SQLite database) by one process at a time.

    Raises:
        TrackingStoreError: a SQLite store whose schema is broken (e.g. half-created by two
            processes with an older s4v) or out of date.
    """
    path = _sqlite_path(tracking_uri)
    if path is None:
        return MlflowClient(tracking_uri=tracking_uri)
    with _store_lock(tracking_uri):
        try:
            # Opening the store creates its schema (a new database) or checks it.
            return MlflowClient(tracking_uri=tracking_uri)
        except (MlflowException, sqlalchemy.exc.SQLAlchemyError) as err:
            reason = str(err).strip().splitlines()[0]
            raise TrackingStoreError(
                f"the MLflow store {path} cannot be opened: its schema is broken or out of date "
                f"({reason}). If it holds runs you need, back it up and try "
                f"`uv run mlflow db upgrade {tracking_uri}`; otherwise move it aside and start a "
                "new store (--tracking-uri sqlite:///NEW.db)"
            ) from None


class RunStopped(KeyboardInterrupt):
    """Raised through a tracked run that was stopped on purpose (by a sweep's scheduler).

    The run did not fail and was not interrupted: :func:`tracked_run` closes it ``FINISHED``.
    A ``KeyboardInterrupt``, so code between the stop and the run's end unwinds as for Ctrl-C.
    """


class Tracker:
    """Logs to one MLflow run; every method is a no-op when tracking is disabled (``run_id`` None)."""

    def __init__(self, client: MlflowClient | None, run_id: str | None, tracking_uri: str | None):
        self.client = client
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.experiment_id: str | None = None
        self.continued = False  # True when an existing run was reopened (resumed training)

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.enabled:
            self.client.log_batch(
                self.run_id, params=[Param(k, str(v)) for k, v in sorted(params.items())]
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if self.enabled:
            self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self.enabled:
            now = int(time.time() * 1000)
            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()],
            )

    def last_step(self, key: str) -> int:
        """The highest step logged for metric ``key`` (0 when none, or tracking is off)."""
        if not self.enabled:
            return 0
        return max((m.step for m in self.client.get_metric_history(self.run_id, key)), default=0)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        if self.enabled:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self.enabled:
            self.client.log_text(self.run_id, text, artifact_file)


# MLflow 3's UI opens an experiment by its kind: without this tag it may guess "GenAI" and land on
# the traces overview; "custom_model_development" opens the runs table (the tag and its values
# are those of MLflow's UI, which also sets them from its experiment-type selector).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"


def mark_training_experiment(
    client: MlflowClient, experiment_id: str, metric: str | None, greater_is_better: bool = True
) -> None:
    """Tag an experiment as model training with ``metric`` as its primary metric.

    The primary metric (``mlflow.experiment.primaryMetric.*``) is what the UI's chart and compare
    views show first. Tags a user already set (e.g. another type chosen in the UI) are kept.
    """
    tags = client.get_experiment(experiment_id).tags
    wanted = {EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND}
    if metric is not None:
        wanted[MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME] = metric
        wanted[MLFLOW_EXPERIMENT_PRIMARY_METRIC_GREATER_IS_BETTER] = str(greater_is_better)
    for key, value in wanted.items():
        if key not in tags:
            client.set_experiment_tag(experiment_id, key, value)


def primary_metric(experiment: Any) -> str | None:
    """The experiment's primary metric (:func:`mark_training_experiment`), if it has one."""
    return experiment.tags.get(MLFLOW_EXPERIMENT_PRIMARY_METRIC_NAME)


def experiment_id_for(
    client: MlflowClient, name: str, metric: str | None = None, greater_is_better: bool = True
) -> str:
    """The id of experiment ``name`` (created if missing), tagged as a model-training experiment."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) "
                "or choose another with --set tracking.experiment=NAME"
            )
        experiment_id = experiment.experiment_id
    else:
        try:
            experiment_id = client.create_experiment(name)
        except MlflowException:
            # Another process created it between our lookup and create.
            experiment_id = client.get_experiment_by_name(name).experiment_id
    mark_training_experiment(client, experiment_id, metric, greater_is_better)
    return experiment_id


@contextmanager
def tracked_run(
    *,
    enabled: bool,
    tracking_uri: str,
    experiment: str,
    run_name: str,
    tags: Mapping[str, str],
    parent_run_id: str | None = None,
    continue_run_id: str | None = None,
    system_metrics: bool = True,
    primary_metric: str | None = None,
) -> Iterator[Tracker]:
    """Open an MLflow run for the body of the ``with`` block and close it with the right status.

    Args:
        enabled: False yields a no-op tracker (other DDP ranks, ``tracking.enabled=false``).
        tracking_uri: e.g. ``sqlite:///mlflow.db`` or ``http://localhost:5000``.
        experiment: experiment name, created when missing (ignored for a nested or continued run).
        run_name: display name of a new run.
        tags: extra tags for a new run (s4v version, git commit and user are added here).
        parent_run_id: create the run as a nested child of this run, in the parent's experiment.
        continue_run_id: reopen this run (a resumed training) instead of creating one, if it exists
            in this store.
        system_metrics: sample CPU/GPU/memory/disk/network usage in a background thread.
        primary_metric: the experiment's primary metric (larger is better) for MLflow's UI.

    Yields:
        The tracker; ``tracker.run_id`` is the MLflow run id (None when disabled).
    """
    if not enabled:
        yield Tracker(None, None, None)
        return

    client = open_client(tracking_uri)
    run = None
    if continue_run_id is not None:
        try:
            run = client.get_run(continue_run_id)
            client.update_run(continue_run_id, status="RUNNING")
        except MlflowException:
            log.info("run %s is not in %s; starting a new run", continue_run_id, tracking_uri)
            run = None
    if run is None:
        if parent_run_id is not None:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
        else:
            experiment_id = experiment_id_for(client, experiment, primary_metric)
        all_tags = {
            "mlflow.source.name": "s4v",
            "mlflow.source.type": "LOCAL",
            "mlflow.user": getpass.getuser(),
            "s4v.version": __version__,
            **tags,
        }
        if commit := git_commit():
            all_tags["mlflow.source.git.commit"] = commit
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)

    tracker = Tracker(client, run.info.run_id, tracking_uri)
    tracker.experiment_id = run.info.experiment_id
    tracker.continued = run.info.run_id == continue_run_id
    monitor = None
    if system_metrics:
        monitor = SystemMetricsMonitor(
            run.info.run_id,
            sampling_interval=SYSTEM_METRICS_INTERVAL_S,
            resume_logging=continue_run_id is not None,
            tracking_uri=tracking_uri,
        )
        monitor.start()
    status = "FAILED"
    try:
        yield tracker
        status = "FINISHED"
    except RunStopped:
        status = "FINISHED"
        raise
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        if monitor is not None:
            monitor.finish()
        client.set_terminated(run.info.run_id, status=status)
