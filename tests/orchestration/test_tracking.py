"""MLflow run lifecycle against a real SQLite store: statuses, nesting, continuation."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow import MlflowClient

from s4v_orchestration.tracking import (
    RunStopped,
    TrackingStoreError,
    experiment_url,
    run_url,
    tracked_run,
    ui_command,
)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating a SQLite store runs MLflow's migrations (seconds).
    root = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)  # artifacts of a SQLite store default to the working directory
        yield f"sqlite:///{root / 'mlflow.db'}"


def _open(store: str, **kwargs):
    args = dict(
        enabled=True,
        tracking_uri=store,
        experiment="recognition-test",
        run_name="r",
        tags={"s4v.dataset": "synthetic"},
        system_metrics=False,
    )
    return tracked_run(**(args | kwargs))


def test_finished_run_holds_params_metrics_tags_and_artifacts(store, tmp_path) -> None:
    (tmp_path / "note.txt").write_text("hello")
    with _open(store, experiment="artifacts") as tracker:
        tracker.log_params({"solver.lr": 0.001})
        tracker.log_metrics({"train/loss": 2.0}, step=1)
        tracker.log_metrics({"train/loss": 1.0}, step=2)
        tracker.log_artifact(tmp_path / "note.txt")
        run_id = tracker.run_id
    client = MlflowClient(store)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"solver.lr": "0.001"}
    assert [m.value for m in client.get_metric_history(run_id, "train/loss")] == [2.0, 1.0]
    assert run.data.tags["s4v.dataset"] == "synthetic"
    assert "s4v.version" in run.data.tags
    assert [a.path for a in client.list_artifacts(run_id)] == ["note.txt"]
    assert client.get_experiment(run.info.experiment_id).name == "artifacts"


def test_exception_ends_failed_ctrl_c_killed_and_a_scheduler_stop_finished(store) -> None:
    ids = {}
    cases = (
        (RuntimeError("boom"), "failed"),
        (KeyboardInterrupt(), "killed"),
        (RunStopped("stopped by ASHA"), "stopped"),
    )
    for exc, name in cases:
        with pytest.raises(type(exc)), _open(store, run_name=name) as tracker:
            ids[name] = tracker.run_id
            raise exc
    client = MlflowClient(store)
    assert client.get_run(ids["failed"]).info.status == "FAILED"
    assert client.get_run(ids["killed"]).info.status == "KILLED"
    assert client.get_run(ids["stopped"]).info.status == "FINISHED"


def test_experiment_is_marked_as_model_training_with_its_primary_metric(store) -> None:
    with _open(store, experiment="kinds", primary_metric="val/top1"):
        pass
    client = MlflowClient(store)
    tags = client.get_experiment_by_name("kinds").tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"
    assert tags["mlflow.experiment.primaryMetric.name"] == "val/top1"
    assert tags["mlflow.experiment.primaryMetric.greaterIsBetter"] == "True"
    # A kind the user chose in the UI is kept.
    client.set_experiment_tag(client.get_experiment_by_name("kinds").experiment_id,
                              "mlflow.experimentKind", "finetuning")  # fmt: skip
    with _open(store, experiment="kinds", primary_metric="val/top1"):
        pass
    assert client.get_experiment_by_name("kinds").tags["mlflow.experimentKind"] == "finetuning"


def test_child_run_nests_under_parent_in_the_parents_experiment(store) -> None:
    client = MlflowClient(store)
    parent = client.create_run(client.create_experiment("sweep"), run_name="sweep")

    with _open(store, parent_run_id=parent.info.run_id, experiment="ignored") as tracker:
        child_id = tracker.run_id
    child = client.get_run(child_id)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == parent.info.experiment_id


def test_continued_run_reopens_the_same_run(store) -> None:
    with pytest.raises(KeyboardInterrupt), _open(store) as tracker:
        first_id = tracker.run_id
        tracker.log_metrics({"val/top1": 10.0}, step=1)
        raise KeyboardInterrupt
    with _open(store, continue_run_id=first_id) as tracker:
        assert tracker.run_id == first_id
        assert tracker.continued
        tracker.log_metrics({"val/top1": 20.0}, step=2)
    client = MlflowClient(store)
    assert client.get_run(first_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first_id, "val/top1")] == [1, 2]
    with _open(store, continue_run_id="0123456789abcdef0123456789abcdef") as tracker:
        assert tracker.run_id != first_id  # unknown in this store: a new run
        assert not tracker.continued


def test_disabled_tracking_logs_nothing(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracked_run(
        enabled=False, tracking_uri=store, experiment="x", run_name="r", tags={}
    ) as tracker:
        tracker.log_metrics({"a": 1.0}, step=0)
        assert tracker.run_id is None
    assert not (tmp_path / "mlflow.db").exists()


def test_ui_command_and_run_url_point_at_the_store(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert ui_command(f"sqlite:///{tmp_path / 'mlflow.db'}") == "s4v ui"
    assert ui_command("sqlite:///x/mlflow.db") == "s4v ui --tracking-uri sqlite:///x/mlflow.db"
    assert ui_command("http://host:5000") == "open http://host:5000"
    view = "workflowType=machine_learning"  # MLflow's model-training pages, not GenAI's
    assert (
        run_url("sqlite:///x/mlflow.db", "3", "abc")
        == f"http://127.0.0.1:5000/#/experiments/3/runs/abc?{view}"
    )
    assert (
        run_url("http://host:5000/", "3", "abc")
        == f"http://host:5000/#/experiments/3/runs/abc?{view}"
    )
    assert experiment_url("http://host:5000", "3", "val/top1") == (
        f"http://host:5000/#/experiments/3/runs?{view}"
        "&orderByKey=metrics.%60val%2Ftop1%60&orderByAsc=false"
    )


# Each process waits for the go file, then opens a run on the same new SQLite store.
_CONCURRENT_RUN = """
import sys, time
from pathlib import Path
from s4v_orchestration.tracking import tracked_run
store, ready, go = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
ready.touch()
while not go.exists():
    time.sleep(0.01)
with tracked_run(enabled=True, tracking_uri=store, experiment="race", run_name="r",
                 tags={}, system_metrics=False) as tracker:
    tracker.log_metrics({"x": 1.0}, step=1)
"""


def test_two_processes_creating_a_new_sqlite_store_at_once_both_succeed(tmp_path) -> None:
    store = f"sqlite:///{tmp_path / 'new.db'}"
    go = tmp_path / "go"
    ready = [tmp_path / f"ready{i}" for i in range(2)]
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT_RUN, store, str(flag), str(go)],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            text=True,
        )
        for flag in ready
    ]
    while not all(flag.exists() for flag in ready):
        assert all(p.poll() is None for p in processes), processes[0].stderr.read()
        time.sleep(0.01)
    go.touch()
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], errors
    runs = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("race").experiment_id]
    )
    assert sorted(r.info.status for r in runs) == ["FINISHED", "FINISHED"]


def test_a_broken_store_is_reported_with_what_to_do(tmp_path) -> None:
    with _open(f"sqlite:///{tmp_path / 'good.db'}"):
        pass
    db = tmp_path / "broken.db"  # a copy: this process has not opened it yet
    shutil.copy(tmp_path / "good.db", db)
    # A schema left half-migrated: the version table names an old revision.
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE alembic_version SET version_num = '451aebb31d03'")
    expected = r"broken\.db cannot be opened.*mlflow db upgrade"
    with pytest.raises(TrackingStoreError, match=expected), _open(f"sqlite:///{db}"):
        pass
