"""Tables of MLflow runs: an experiment's runs or one sweep's trials, sorted by a metric.

``s4v runs`` prints these, and ``s4v sweep`` prints the table of its trials when it ends. The
parameter columns are the ones that tell the runs apart: a sweep's searched paths, or otherwise
the parameters whose values differ between the listed runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from rich import box
from rich.table import Table

from s4v_orchestration.sweep.spec import DEFAULT_METRICS
from s4v_orchestration.sweep.tracking import (
    TAG_KIND,
    TAG_METRIC,
    TAG_MODE,
    TAG_SEARCHED,
    TAG_SWEEP,
    TAG_TRIAL_EPOCHS,
    TAG_TRIAL_ERROR,
    TAG_TRIAL_STATE,
)

# Parameters that differ between runs without describing the experiment (paths, bookkeeping).
_NOT_HYPERPARAMETERS = ("output_dir", "resume", "data.root", "tracking.", "device")
MAX_AUTO_COLUMNS = 6
SHORT_ID = 8  # run ids are shown by their first characters (MLflow's UI and API take the full id)


class RunLookupError(LookupError):
    """The experiment or sweep asked for does not exist in the store."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RunRow:
    run_id: str
    name: str
    status: str  # MLflow status: FINISHED, FAILED, KILLED, RUNNING
    state: str  # a sweep trial's s4v.trial.state (completed, stopped_early, failed), else ""
    epochs: str  # epochs a sweep trial completed, else ""
    value: float | None  # the metric's latest value
    error: str = ""  # a failed trial's error (last line of its traceback)
    kind: str = ""  # s4v.kind: "evaluation" for `s4v eval` runs, else ""
    params: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class RunListing:
    title: str
    metric: str
    mode: str
    columns: list[str]  # parameter columns, in order
    rows: list[RunRow]  # sorted, best first


def _row(run: Run, metric: str) -> RunRow:
    tags = run.data.tags
    return RunRow(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id[:8],
        status=run.info.status,
        state=tags.get(TAG_TRIAL_STATE, ""),
        epochs=tags.get(TAG_TRIAL_EPOCHS, ""),
        value=run.data.metrics.get(metric),
        error=tags.get(TAG_TRIAL_ERROR, ""),
        kind=tags.get(TAG_KIND, ""),
        params=dict(run.data.params),
    )


def _sorted(rows: list[RunRow], mode: str) -> list[RunRow]:
    sign = -1.0 if mode == "max" else 1.0

    def key(row: RunRow) -> tuple[bool, float]:
        missing = row.value is None or math.isnan(row.value)
        return (missing, 0.0 if missing else sign * row.value)

    return sorted(rows, key=key)


def _varying_params(rows: list[RunRow]) -> list[str]:
    # Evaluation runs carry other parameters (views): they must not push the training runs'
    # hyperparameters out of the table.
    rows = [row for row in rows if row.kind != "evaluation"] or rows
    names = sorted({name for row in rows for name in row.params})
    varying = [
        name
        for name in names
        if not name.startswith(_NOT_HYPERPARAMETERS)
        and len({row.params.get(name) for row in rows}) > 1
    ]
    return varying[:MAX_AUTO_COLUMNS]


def _default_metric(runs: list[Run]) -> str:
    """The first task default (val top-1, then t2v R@1) that any of the runs logged."""
    for metric, _ in DEFAULT_METRICS.values():
        if any(metric in run.data.metrics for run in runs):
            return metric
    return DEFAULT_METRICS["recognition"][0]


def find_sweep(client: MlflowClient, sweep: str, experiment: str | None = None) -> Run:
    """A sweep's parent run by sweep name (the newest if the name was reused), run id or id prefix."""
    try:
        run = client.get_run(sweep)
        if run.data.tags.get(TAG_KIND) == "sweep":
            return run
    except MlflowException:  # not a run id
        pass
    experiments = (
        [client.get_experiment_by_name(experiment)] if experiment else client.search_experiments()
    )
    ids = [e.experiment_id for e in experiments if e is not None]
    parents = client.search_runs(
        ids,
        filter_string=f"tags.`{TAG_KIND}` = 'sweep'",
        order_by=["attributes.start_time DESC"],
        max_results=5000,
    )
    # By name (the newest if reused), else by the start of its run id as the tables show it.
    found = [run for run in parents if run.data.tags.get(TAG_SWEEP) == sweep] or [
        run for run in parents if run.info.run_id.startswith(sweep)
    ]
    if not found:
        raise RunLookupError(f"no sweep named {sweep!r} in this store")
    return found[0]


def list_sweep(
    client: MlflowClient, parent: Run, *, metric: str | None = None, mode: str | None = None
) -> RunListing:
    """The trials of one sweep (the children of its parent run), best first.

    Runs of a trial that was restarted from scratch are left out (``superseded``); the trial's
    current run stands for it.
    """
    tags = parent.data.tags
    metric = metric or tags.get(TAG_METRIC) or DEFAULT_METRICS["recognition"][0]
    mode = mode or tags.get(TAG_MODE, "max")
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'",
        max_results=5000,
    )
    searched = [p for p in tags.get(TAG_SEARCHED, "").split(",") if p]
    current = [run for run in children if run.data.tags.get(TAG_TRIAL_STATE) != "superseded"]
    rows = _sorted([_row(run, metric) for run in current], mode)
    return RunListing(
        title=f"sweep {tags.get(TAG_SWEEP, parent.info.run_name)} ({parent.info.run_id})",
        metric=metric,
        mode=mode,
        columns=searched or _varying_params(rows),
        rows=rows,
    )


def list_experiment(
    client: MlflowClient,
    experiment: str,
    *,
    metric: str | None = None,
    mode: str = "max",
    limit: int = 50,
) -> RunListing:
    """The runs of one experiment (sweep parents left out: their trials are listed), best first."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = ", ".join(sorted(e.name for e in client.search_experiments())) or "none"
        raise RunLookupError(f"no experiment {experiment!r} in this store (experiments: {names})")
    runs = [
        run
        for run in client.search_runs([found.experiment_id], max_results=5000)
        if run.data.tags.get(TAG_KIND) != "sweep"
        and run.data.tags.get(TAG_TRIAL_STATE) != "superseded"
    ]
    metric = metric or _default_metric(runs)
    rows = _sorted([_row(run, metric) for run in runs], mode)[:limit]
    return RunListing(
        title=f"experiment {experiment}",
        metric=metric,
        mode=mode,
        columns=_varying_params(rows),
        rows=rows,
    )


def render(listing: RunListing, *, highlight: str | None = None, extra: list[str] = ()) -> Table:
    """A rich table: rank, run, state, metric, parameter columns, run id.

    Args:
        listing: the rows and columns to show.
        highlight: a run id to mark as the best (the sweep's chosen trial).
        extra: parameter names to show in addition to the listing's own columns.
    """
    columns = list(dict.fromkeys([*listing.columns, *extra]))
    arrow = "↓" if listing.mode == "max" else "↑"
    # Light borders and shared padding: a sweep's table fits 100 columns.
    table = Table(
        title=listing.title,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        collapse_padding=True,
        pad_edge=False,
    )
    table.add_column("#", justify="right", no_wrap=True)
    # Never cut: trial names share a long prefix (trial-0958d_00001, trial-0958d_00002, ...).
    table.add_column(
        "run", no_wrap=True, min_width=max((len(r.name) for r in listing.rows), default=3)
    )
    table.add_column("state", min_width=10, no_wrap=True)
    table.add_column(f"{listing.metric} {arrow}", justify="right", no_wrap=True)
    for name in columns:
        # The header breaks after the section (solver. / lr); on a narrow terminal the values
        # fold rather than the run names being cut.
        table.add_column(name.replace(".", ".\n", 1), justify="right", overflow="fold")
    table.add_column("run id", no_wrap=True)
    for rank, row in enumerate(listing.rows, start=1):
        state = row.kind or row.state or row.status.lower()
        if row.state == "stopped_early":
            state = f"stopped @{row.epochs}" if row.epochs else "stopped"  # early, by the scheduler
        value = "-" if row.value is None else f"{row.value:.4g}"
        style = "bold green" if row.run_id == highlight else None
        cells = [str(rank), row.name, state, value]
        cells += [significant(row.params.get(name, "-")) for name in columns]
        table.add_row(*cells, row.run_id[:SHORT_ID], style=style)
    return table


def significant(text: str) -> str:
    """A parameter value as shown: floats to 4 significant digits, anything else as logged."""
    try:
        number = float(text)
    except ValueError:
        return text
    if text.strip().lstrip("-").isdigit() or not math.isfinite(number):
        return text  # integers and inf/nan stay as they are
    return f"{number:.4g}"
