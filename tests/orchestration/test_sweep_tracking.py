"""MLflow bookkeeping of sweeps on a real SQLite store, and the run tables built from it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from rich.console import Console
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.run_table import (
    find_sweep,
    list_experiment,
    list_sweep,
    render,
    significant,
)
from s4v_orchestration.sweep.spec import parse_sweep
from s4v_orchestration.sweep.tracking import (
    TAG_TRIAL_ERROR,
    TAG_TRIAL_STATE,
    TrialOutcome,
    error_summary,
    finish_parent_run,
    normalise_tracking_uri,
    record_trial,
    start_parent_run,
    tidy_trial_runs,
)
from s4v_orchestration.tracking import experiment_id_for

SWEEP = """\
name: lr-search
task: recognition
dataset: synthetic
set: {solver.epochs: 4}
search_space:
  solver.lr: {type: loguniform, low: 1.0e-4, high: 1.0e-1}
num_samples: 3
"""


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """One real SQLite store for the module (creating the schema takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def store(store_uri: str, request) -> tuple[MlflowClient, str, str]:
    """(client, uri, experiment id) with an experiment of this test's own."""
    client = MlflowClient(store_uri)
    return client, store_uri, experiment_id_for(client, request.node.name)


def _child(client: MlflowClient, experiment_id: str, parent: str, name: str, lr: float, top1):
    """A trial's run as train() creates it: nested under the parent, params and per-epoch metrics."""
    run_id = client.create_run(
        experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent}
    ).info.run_id
    client.log_param(run_id, "solver.lr", lr)
    client.log_param(run_id, "output_dir", f"/tmp/{name}")
    for epoch, value in enumerate(top1, start=1):
        client.log_metric(run_id, "val/top1", value, step=epoch)
    return run_id


def _start(client, experiment_id):
    spec = parse_sweep(SWEEP)
    return start_parent_run(
        client, experiment_id=experiment_id, spec=spec, sweep_text=SWEEP, storage="/runs/lr-search"
    )


def test_parent_run_holds_the_sweep_file_search_space_and_settings(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    run = client.get_run(parent)
    assert run.info.run_name == "lr-search"
    assert run.data.params["space.solver.lr"] == "loguniform(0.0001, 0.1)"
    assert run.data.params["set.solver.epochs"] == "4"
    assert run.data.params["sweep.scheduler"] == "asha"
    assert run.data.tags["s4v.sweep.metric"] == "val/top1"
    artifacts = Path(run.info.artifact_uri.removeprefix("file://"))
    assert (artifacts / "sweep.yaml").read_text() == SWEEP
    assert "loguniform" in (artifacts / "search_space.json").read_text()


def test_trial_outcomes_are_tagged_and_stopped_trials_are_not_failed(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    done = _child(client, experiment_id, parent, "trial-a", 0.01, [40, 70, 80, 85])
    client.set_terminated(done, "FINISHED")  # train() closed it
    stopped = _child(client, experiment_id, parent, "trial-b", 0.0001, [10])  # killed mid-run
    for run_id, name, state, epochs in [
        (done, "trial-a", "completed", 4),
        (stopped, "trial-b", "stopped_early", 1),
    ]:
        outcome = TrialOutcome(
            trial_id=name, run_name=name, state=state, params={}, epochs_completed=epochs
        )
        assert (
            record_trial(client, experiment_id=experiment_id, parent_run_id=parent, outcome=outcome)
            == run_id
        )
    # A trial that raised before train() created its run still gets a (failed) child.
    error = 'Traceback (most recent call last):\n  File "x.py"\nValueError: lr too high\n'
    failed = record_trial(
        client,
        experiment_id=experiment_id,
        parent_run_id=parent,
        outcome=TrialOutcome(
            trial_id="c", run_name="trial-c", state="failed", params={"solver.lr": 5.0}, error=error
        ),
    )
    runs = {run.info.run_name: run for run in client.search_runs([experiment_id])}
    assert runs["trial-a"].info.status == "FINISHED"
    assert runs["trial-a"].data.tags[TAG_TRIAL_STATE] == "completed"
    assert runs["trial-b"].info.status == "FINISHED"  # stopped by the scheduler: not a failure
    assert runs["trial-b"].data.tags[TAG_TRIAL_STATE] == "stopped_early"
    assert runs["trial-c"].info.run_id == failed
    assert runs["trial-c"].info.status == "FAILED"
    assert runs["trial-c"].data.tags[MLFLOW_PARENT_RUN_ID] == parent
    assert runs["trial-c"].data.tags[TAG_TRIAL_ERROR] == "ValueError: lr too high"
    assert runs["trial-c"].data.params["solver.lr"] == "5.0"


def test_recording_twice_changes_nothing(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    run_id = _child(client, experiment_id, parent, "trial-a", 0.01, [40])
    outcome = TrialOutcome(trial_id="a", run_name="trial-a", state="stopped_early", params={})
    for _ in range(2):
        record_trial(client, experiment_id=experiment_id, parent_run_id=parent, outcome=outcome)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert len(client.search_runs([experiment_id])) == 2  # parent + the one child


def test_parent_gets_the_best_trial_and_its_state(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    best = TrialOutcome(
        trial_id="a",
        run_name="trial-a",
        state="completed",
        params={"solver.lr": 0.01},
        metrics={"val/top1": 85.0, "test/top1": 84.0},
        epochs_completed=4,
        mlflow_run_id="abc",
        checkpoint="/runs/lr-search/a/checkpoint_000003/checkpoint.pt",
    )
    finish_parent_run(
        client, parent_run_id=parent, best=best, best_config={"solver": {}}, interrupted=False
    )
    run = client.get_run(parent)
    assert run.info.status == "FINISHED"
    assert run.data.metrics == {"val/top1": 85.0, "test/top1": 84.0}
    # one point, at the best trial's epoch (no stray step-0 point on the charts)
    assert [m.step for m in client.get_metric_history(parent, "val/top1")] == [4]
    assert run.data.tags["s4v.sweep.best_run_id"] == "abc"
    assert run.data.tags["best.solver.lr"] == "0.01"
    assert run.data.tags["s4v.sweep.best_checkpoint"].endswith("checkpoint.pt")
    finish_parent_run(client, parent_run_id=parent, best=None, best_config=None, interrupted=True)
    assert client.get_run(parent).info.status == "KILLED"
    assert client.get_run(parent).data.tags["s4v.sweep.state"] == "interrupted"


def test_sweep_table_sorts_by_metric_and_shows_searched_params(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    _child(client, experiment_id, parent, "trial-a", 0.01, [40, 70])
    _child(client, experiment_id, parent, "trial-b", 0.1, [50, 90])
    _child(client, experiment_id, parent, "trial-c", 0.001, [])  # failed before validating
    experiment = client.get_experiment(experiment_id).name
    listing = list_sweep(client, find_sweep(client, "lr-search", experiment))
    assert [row.name for row in listing.rows] == ["trial-b", "trial-a", "trial-c"]
    assert listing.columns == ["solver.lr"]
    assert listing.metric == "val/top1"
    assert find_sweep(client, parent).info.run_id == parent  # by run id too
    listing_min = list_sweep(client, client.get_run(parent), mode="min")
    assert [row.name for row in listing_min.rows] == ["trial-a", "trial-b", "trial-c"]
    assert render(listing).row_count == 3


def test_experiment_table_hides_sweep_parents_and_shows_varying_params(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    _child(client, experiment_id, parent, "trial-a", 0.01, [40])
    _child(client, experiment_id, parent, "trial-b", 0.1, [60])
    listing = list_experiment(client, client.get_experiment(experiment_id).name)
    assert [row.name for row in listing.rows] == ["trial-b", "trial-a"]
    # solver.lr differs between the runs; output_dir differs too but is not a hyperparameter.
    assert listing.columns == ["solver.lr"]


def test_runs_command_prints_the_sorted_table(store) -> None:
    client, uri, experiment_id = store
    parent = _start(client, experiment_id)
    low = _child(client, experiment_id, parent, "trial-a", 0.01, [40])
    high = _child(client, experiment_id, parent, "trial-b", 0.1, [60])
    runner = CliRunner()
    experiment = client.get_experiment(experiment_id).name
    result = runner.invoke(
        app, ["runs", "-e", experiment, "--sweep", "lr-search", "--tracking-uri", uri]
    )
    assert result.exit_code == 0, result.output
    assert result.output.index(high[:8]) < result.output.index(low[:8])  # short run ids
    assert "solver." in result.output and " lr " in result.output and "val/top1" in result.output
    result = runner.invoke(app, ["runs", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert experiment in result.output
    result = runner.invoke(app, ["runs", "-e", "nope", "--tracking-uri", uri])
    assert result.exit_code == 2
    assert "no experiment 'nope'" in result.output


def test_relative_sqlite_uri_is_made_absolute(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert normalise_tracking_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"
    assert normalise_tracking_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert normalise_tracking_uri("http://host:5000") == "http://host:5000"


def test_error_summary_is_the_last_traceback_line() -> None:
    assert error_summary("Traceback\n  File a\nRuntimeError: boom\n\n") == "RuntimeError: boom"


def test_restarted_trials_leave_one_current_run_and_leftovers_are_closed(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    old = _child(client, experiment_id, parent, "trial-a", 0.01, [40])  # killed with a driver
    time.sleep(0.01)  # MLflow orders runs by start time in milliseconds
    new = _child(client, experiment_id, parent, "trial-a", 0.01, [41, 50])  # its restart
    client.set_terminated(new, "FINISHED")
    client.set_tag(new, TAG_TRIAL_STATE, "completed")  # as the trial recorder tags it
    leftover = _child(client, experiment_id, parent, "trial-b", 0.1, [30])  # never closed
    # stopped by Tune when Ctrl-C interrupted the sweep: train() closed it FINISHED, no outcome
    stopped = _child(client, experiment_id, parent, "trial-c", 0.2, [20])
    client.set_terminated(stopped, "FINISHED")
    tidy_trial_runs(client, experiment_id=experiment_id, parent_run_id=parent, finished=False)
    assert client.get_run(old).data.tags[TAG_TRIAL_STATE] == "superseded"
    assert client.get_run(old).info.status == "KILLED"
    assert client.get_run(leftover).info.status == "RUNNING"  # may still be resumed
    assert client.get_run(stopped).data.tags[TAG_TRIAL_STATE] == "unfinished"
    assert client.get_run(stopped).info.status == "KILLED"
    tidy_trial_runs(client, experiment_id=experiment_id, parent_run_id=parent, finished=True)
    assert client.get_run(leftover).data.tags[TAG_TRIAL_STATE] == "abandoned"
    assert client.get_run(leftover).info.status == "KILLED"
    assert client.get_run(new).data.tags[TAG_TRIAL_STATE] == "completed"
    assert client.get_run(new).info.status == "FINISHED"
    rows = list_sweep(client, client.get_run(parent)).rows
    assert [row.run_id for row in rows] == [new, leftover, stopped]  # one row per trial


def test_runs_table_at_100_columns_tells_trials_apart_and_rounds(store) -> None:
    client, _, experiment_id = store
    parent = _start(client, experiment_id)
    lrs = [0.0031622776601683794, 0.0001778279410038923, 0.056234132519034905]
    for index, lr in enumerate(lrs):
        run_id = _child(client, experiment_id, parent, f"trial-0958d_{index:05d}", lr, [70 + index])
        for name in ("model.side_dim", "data.batch_size", "solver.weight_decay"):
            client.log_param(run_id, name, 0.123456789 * (index + 1))
    # An evaluation run in the same experiment: its parameters must not displace the trials'.
    evaluation = client.create_run(experiment_id, tags={"s4v.kind": "evaluation"}).info.run_id
    client.log_param(evaluation, "views", "3x2")
    listing = list_experiment(client, client.get_experiment(experiment_id).name)
    assert "views" not in listing.columns and "solver.lr" in listing.columns
    console = Console(width=100, record=True)
    console.print(render(listing))
    text = console.export_text()
    for index in range(3):
        assert f"trial-0958d_{index:05d}" in text
    assert "0.0031622776" not in text  # 4 significant digits (a narrow column may fold them)
    assert "0.003162" in listing_text(listing) and "0.0001778" in listing_text(listing)
    assert "evaluation" in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_significant_keeps_integers_and_words() -> None:
    assert significant("0.0031622776601683794") == "0.003162"
    assert significant("128") == "128"
    assert significant("side4video") == "side4video"
    assert significant("1e-05") == "1e-05"


def test_runs_in_a_folder_without_a_store_says_so_and_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    result = CliRunner().invoke(app, ["runs"])
    assert result.exit_code == 2
    assert "no MLflow store here" in result.output
    assert not (tmp_path / "mlflow.db").exists()


def listing_text(listing) -> str:
    console = Console(width=200, record=True)
    console.print(render(listing))
    return console.export_text()
