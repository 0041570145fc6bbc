"""The MLflow model of a run: logged from code with the export as artifacts, loaded back by
``mlflow.pyfunc.load_model("runs:/<run_id>/model")`` from a real SQLite store."""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow import MlflowClient

from s4v_orchestration.inference import load_recognizer
from s4v_orchestration.inference.pyfunc import (
    log_pyfunc,
    register_run_model,
    tracking_uri_set_to,
)
from s4v_orchestration.train import train


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in the working directory
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with tracking_uri_set_to(uri):  # restored (and $MLFLOW_TRACKING_URI with it) afterwards
        yield uri


def test_pyfunc_round_trip_gives_the_recognizers_answer(
    recognition_checkpoint, synthetic_root, store
):
    path, _, _ = recognition_checkpoint
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("pyfunc"))
    info = log_pyfunc(path, run_id=run.info.run_id, tracking_uri=store)
    client.set_terminated(run.info.run_id)
    # Listed under the run's "Logged models".
    outputs = client.get_run(run.info.run_id).outputs.model_outputs
    assert [o.model_id for o in outputs] == [info.model_id]

    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.get_input_schema().input_names() == ["path"]
    videos = [str(synthetic_root / "rawframes" / name) for name in ("vid_00_0000", "vid_05_0000")]
    answer = model.predict(pd.DataFrame({"path": videos}), params={"k": 3})
    recognizer = load_recognizer(path)
    for row, video in zip(answer.itertuples(), videos, strict=True):
        expected = recognizer.predict(video, k=3)
        assert list(row.labels) == [label for label, _ in expected]
        assert list(row.probabilities) == pytest.approx([p for _, p in expected], abs=1e-6)
        assert row.error == ""

    version = register_run_model(run.info.run_id, "s4v-tiny", tracking_uri=store)
    assert int(version.version) == 1 and info.model_id in version.source
    assert int(client.get_model_version_by_alias("s4v-tiny", "best").version) == 1


def test_a_finished_tracked_run_logs_its_model(tiny_config, store):
    config = tiny_config(
        "tracked",
        **{
            "solver.epochs": 1,
            "tracking.enabled": True,
            "tracking.uri": store,
            "eval.final_test": False,
        },
    )
    train(config)
    client = MlflowClient(store)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("recognition-synthetic").experiment_id]
    )
    assert run.info.status == "FINISHED"
    assert len(run.outputs.model_outputs) == 1
    model = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert model.metadata.get_output_schema().input_names() == [
        "path",
        "labels",
        "probabilities",
        "error",
    ]


def test_sweep_register_logs_a_stopped_trials_model_then_registers_it(
    recognition_checkpoint, store
):
    from s4v_orchestration.commands.sweep import _register

    path, _, _ = recognition_checkpoint
    client = MlflowClient(store)
    run = client.create_run(client.create_experiment("sweep"))  # a trial that logged no model
    _register("s4v-sweep-best", run.info.run_id, str(path), store)
    (output,) = client.get_run(run.info.run_id).outputs.model_outputs
    version = client.get_model_version_by_alias("s4v-sweep-best", "best")
    assert output.model_id in version.source
    _register("s4v-sweep-best", run.info.run_id, str(path), store)  # no second model logged
    assert len(client.get_run(run.info.run_id).outputs.model_outputs) == 1
    assert int(client.get_model_version_by_alias("s4v-sweep-best", "best").version) == 2


def test_logging_a_model_leaves_the_processes_tracking_uri_as_it_was(monkeypatch, tmp_path) -> None:
    """mlflow.set_tracking_uri writes $MLFLOW_TRACKING_URI; s4v's default store must not move."""
    import os

    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mlflow.set_tracking_uri(None)
    with tracking_uri_set_to(f"sqlite:///{tmp_path / 'a.db'}"):
        assert os.environ["MLFLOW_TRACKING_URI"].endswith("a.db")
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert not mlflow.tracking.is_tracking_uri_set()
