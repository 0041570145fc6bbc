"""`s4v run recognition` and `s4v eval recognition` through the real CLI and a real MLflow store."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_recognition import build_model
from s4v_recognition.checkpoints import convert_side4video_checkpoint
from s4v_recognition.releases import reference_key_map

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, terminal_width=200, catch_exceptions=False)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # MLflow's artifacts of a SQLite store go to the working directory
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_two_step_run_is_recorded_in_mlflow_and_evaluates(in_tmp, tiny_overrides) -> None:
    store = f"sqlite:///{in_tmp / 'mlflow.db'}"
    sets = tiny_overrides(
        "cli", **{"tracking.enabled": True, "solver.max_steps": 2, "tracking.log_every": 1}
    )
    result = _invoke(
        ["run", "recognition", "--dataset", "synthetic", "--tracking-uri", store,
         *[arg for item in sets for arg in ("--set", item)]]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "open the MLflow UI: s4v ui\n" in result.output

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("recognition-synthetic")
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.info.run_id in result.output
    url = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
    view = "workflowType=machine_learning"
    assert f"this run: {url}/{run.info.run_id}?{view}\n" in result.output
    assert f"its experiment, best first: {url}?{view}&orderByKey=metrics.%60val%2Ftop1%60" in (
        result.output
    )
    # Not a terminal: a plain line per epoch, the same as in train.log.
    [line] = [x for x in result.output.splitlines() if x.startswith("epoch 1/")]
    assert "loss " in line and "val/top1 " in line and " eta 0:00" in line
    logged = (in_tmp / "cli" / "train.log").read_text().splitlines()
    assert len(logged) == 1 and logged[0].endswith(line)
    assert run.data.params["solver.max_steps"] == "2"
    assert run.data.params["model.preset"] == "tiny"
    # Only this task's parameters; what changes no number is a tag.
    assert not [p for p in run.data.params if p.startswith(("retrieval.", "tracking."))]
    assert "output_dir" not in run.data.params and "cpu_threads" not in run.data.params
    assert run.data.tags["s4v.config.output_dir"] == str(in_tmp / "cli")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert experiment.tags["mlflow.experiment.primaryMetric.name"] == "val/top1"
    assert run.data.tags["s4v.dataset"] == "synthetic"
    assert run.data.tags["s4v.backbone"] == "s4v-tiny"
    assert "tiny" in run.info.run_name and "synthetic" in run.info.run_name
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert steps == [1, 2]
    for key in ("train/lr", "train/clips_per_s", "val/top1", "val/top5", "epoch/time_s",
                "epoch/peak_mem_mb", "test/top1", "test/mean_class"):  # fmt: skip
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "checkpoints", "eval"} <= artifacts
    eval_files = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert eval_files == {"eval/eval.json", "eval/per_class.csv", "eval/confusion.png"}
    assert [a.path for a in client.list_artifacts(run.info.run_id, "checkpoints")] == [
        "checkpoints/best.pt"
    ]

    # The best checkpoint evaluates with 3 crops x 2 clips, into the same store.
    best = in_tmp / "cli" / "best.pt"
    result = _invoke(
        ["eval", "recognition", "--checkpoint", str(best), "--views", "3x2",
         "--tracking-uri", store]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = in_tmp / "cli" / "eval-3x2"
    summary = json.loads((report / "eval.json").read_text())
    assert summary["views"] == "3x2"
    assert summary["num_videos"] == 8
    with (report / "per_class.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [row["class_name"] for row in rows][:2] == [
        "moving left to right",
        "moving right to left",
    ]
    assert (report / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    runs = client.search_runs([experiment.experiment_id], "tags.`s4v.kind` = 'evaluation'")
    assert runs[0].data.tags["s4v.trained_in_run"] == run.info.run_id
    assert runs[0].info.status == "FINISHED"


def test_bad_override_fails_before_anything_runs(in_tmp) -> None:
    result = _invoke(["run", "recognition", "--dataset", "synthetic", "--set", "solver.lrr=1"])
    assert result.exit_code == 2
    assert "solver.lrr: unknown field  [from --set solver.lrr=1]" in result.output
    assert not (in_tmp / "mlflow.db").exists()


def test_missing_real_dataset_says_what_was_looked_for(in_tmp) -> None:
    result = _invoke(
        ["run", "recognition", "--dataset", "ssv1", "--data-root", str(in_tmp / "nothing"),
         "--no-tracking"]
    )  # fmt: skip
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert f"label file {in_tmp / 'nothing' / 'sth_labels.csv'}" in output
    assert f"training list {in_tmp / 'nothing' / 'train_rawframes.txt'}" in output
    assert "s4v data extract" in output
    assert "--dataset synthetic" in output


def test_a_file_that_is_not_a_checkpoint_gives_one_error_line_naming_it(in_tmp) -> None:
    notes = in_tmp / "notes.txt"
    notes.write_text("not weights\n")
    released = in_tmp / "model_best.pt"
    torch.save({"model_state_dict": {"fc.weight": torch.zeros(2, 2)}}, released)
    for path, reason in ((notes, "not a torch checkpoint"), (released, "not an s4v checkpoint")):
        result = _invoke(["eval", "recognition", "--checkpoint", str(path), "--no-tracking"])
        assert result.exit_code == 2
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {reason}"), result.output


def _release_of(model: torch.nn.Module) -> dict:
    """``model``'s weights in the layout of the reference repository's released checkpoints."""
    ours = model.state_dict()
    state = {}
    for reference, key in reference_key_map(model).items():
        tensor = ours[key]
        if (".conv.0." in reference or ".conv.2." in reference) and tensor.dim() == 2:
            tensor = tensor.reshape(*tensor.shape, 1, 1, 1)
        state[reference] = tensor
    return {"epoch": 1, "model_state_dict": state}


def test_converted_release_evaluates_on_the_dataset_it_is_given(in_tmp, synthetic_root) -> None:
    torch.manual_seed(0)
    model = build_model("tiny", 8).eval()
    torch.save(_release_of(model), in_tmp / "model_best.pt")
    converted = in_tmp / "tiny-synthetic.pt"
    convert_side4video_checkpoint(in_tmp / "model_best.pt", converted, "tiny", 8)
    args = ["eval", "recognition", "--checkpoint", str(converted), "--no-tracking"]

    result = _invoke(args)
    assert result.exit_code == 2
    assert "--dataset" in result.output

    data = ["--data-root", str(synthetic_root), "--set", "data.synthetic.videos_per_class=5",
            "--set", "data.synthetic.size=32"]  # fmt: skip
    result = _invoke([*args, "--dataset", "synthetic", "--views", "1x2", *data])
    assert result.exit_code == 0, result.output
    summary = json.loads((in_tmp / "eval-1x2" / "eval.json").read_text())
    assert summary["num_videos"] == 8 and summary["num_classes"] == 8


def test_release_converted_with_its_dataset_evaluates_without_the_original_file(
    in_tmp, synthetic_root
) -> None:
    torch.manual_seed(1)
    torch.save(_release_of(build_model("tiny", 8).eval()), in_tmp / "model_best.pt")
    converted = in_tmp / "converted.pt"
    result = _invoke(
        ["convert", "side4video", str(in_tmp / "model_best.pt"), str(converted), "--preset",
         "tiny", "--num-classes", "8", "--dataset", "synthetic"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (in_tmp / "model_best.pt").unlink()  # the converted file carries the frozen backbone
    result = _invoke(
        ["eval", "recognition", "--checkpoint", str(converted), "--no-tracking",
         "--data-root", str(synthetic_root), "--set", "data.synthetic.videos_per_class=5",
         "--set", "data.synthetic.size=32"]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((in_tmp / "eval-1x1" / "eval.json").read_text())["num_videos"] == 8


@pytest.mark.parametrize("task", ["recognition", "retrieval"])
def test_seed_method_and_cfg_options_reach_the_run_config(task, in_tmp, monkeypatch) -> None:
    import s4v_orchestration.train as train_module

    seen = {}

    def capture(config, **kwargs):
        seen["config"] = config
        raise KeyboardInterrupt  # stop before any training: the CLI reports an interruption

    monkeypatch.setattr(train_module, "run_training", capture)
    method = "st-adapter" if task == "recognition" else "frozen-clip"
    result = _invoke(
        ["run", task, "--dataset", "synthetic", "--seed", "17", "--method", method,
         "--cfg-options", "solver.lr=0.25", "--no-tracking"]
    )  # fmt: skip
    assert result.exit_code == 130, result.output
    config = seen["config"]
    assert (config.seed, config.model.method, config.solver.lr) == (17, method, 0.25)


def test_version_option_prints_the_package_version() -> None:
    from s4v_orchestration import __version__

    result = _invoke(["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"s4v {__version__}"


def test_only_rank_zero_prints_the_run_summary(in_tmp, monkeypatch) -> None:
    import s4v_orchestration.train as train_module
    from s4v_orchestration.overrides import load_run_config

    config = load_run_config("recognition", "synthetic").with_defaults()

    def finished(run_config, **kwargs):
        return train_module.TrainResult(
            metrics={"val/best_top1": 50.0, "best_epoch": 1.0},
            config=config,
            run_id=None,
            best_checkpoint=None,
            last_checkpoint=in_tmp / "last.pt",
            is_main=rank == 0,
        )

    monkeypatch.setattr(train_module, "run_training", finished)
    for rank in (1, 0):
        result = _invoke(["run", "recognition", "--dataset", "synthetic", "--no-tracking"])
        assert result.exit_code == 0, result.output
        assert ("run summary" in result.output) == (rank == 0)


def test_logging_setup_keeps_mlflow_info_out_of_the_terminal() -> None:
    import logging

    from s4v_orchestration.commands.common import configure_logging

    configure_logging(verbose=True)
    # MLflow's system-metrics and database-setup messages are INFO records of these loggers.
    for name in ("mlflow.system_metrics.system_metrics_monitor", "mlflow.store.db.utils"):
        assert not logging.getLogger(name).isEnabledFor(logging.INFO)
    assert logging.getLogger("s4v_orchestration").isEnabledFor(logging.INFO)
