"""Fault injection through the real CLI: nothing lost, nothing silent, one-line errors."""

from __future__ import annotations

import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from mlflow import MlflowClient
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.config import latest_output_dir
from s4v_orchestration.overrides import load_run_config
from s4v_orchestration.train import train

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, terminal_width=200, catch_exceptions=False)


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_a_copied_synthetic_set_with_other_parameters_is_left_alone(
    in_tmp, synthetic_root, tiny_overrides
) -> None:
    copy = in_tmp / "copy"
    shutil.copytree(synthetic_root, copy)
    (copy / "NOTES.txt").write_text("keep me")
    sets = tiny_overrides(**{"data.root": copy, "data.synthetic.num_frames": 12})
    result = _invoke(["run", "recognition", "--dataset", "synthetic", *_sets(sets)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "other parameters: num_frames 16, not 12" in result.output
    assert (copy / "NOTES.txt").read_text() == "keep me"
    assert sorted(p.name for p in in_tmp.iterdir()) == ["copy", "run"]  # no other data folder
    assert list((in_tmp / "run").iterdir()) == []  # and the run never started


def test_a_rerun_never_overwrites_checkpoints_without_overwrite(in_tmp, tiny_overrides) -> None:
    sets = _sets(tiny_overrides("out", **{"solver.epochs": 1, "eval.final_test": False}))
    command = ["run", "recognition", "--dataset", "synthetic", *sets]
    assert _invoke(command).exit_code == 0
    best = in_tmp / "out" / "best.pt"
    before = best.read_bytes()
    refused = _invoke(command)
    assert refused.exit_code == 2, refused.output
    assert "already holds the checkpoints" in refused.output and "--overwrite" in refused.output
    assert best.read_bytes() == before
    assert _invoke([*command, "--overwrite"]).exit_code == 0


def test_default_output_folders_are_timestamped_and_resume_takes_the_latest(in_tmp) -> None:
    config = load_run_config("recognition", "synthetic")
    first = config.with_defaults().output_dir
    assert re.fullmatch(r"recognition-synthetic-tiny-side4video-\d{8}-\d{6}", first.name)
    assert first.parent == in_tmp / "runs"
    older, newer, unfinished = (
        in_tmp / "runs" / f"recognition-synthetic-tiny-side4video-{stamp}"
        for stamp in ("20260101-000000", "20260102-000000", "20260103-000000")
    )
    for folder in (older, newer):
        folder.mkdir(parents=True)
        (folder / "last.pt").write_bytes(b"")
    unfinished.mkdir()  # no checkpoint yet: nothing to resume there
    (in_tmp / "runs" / "recognition-synthetic-tiny-side4video-mine").mkdir()
    assert latest_output_dir(config) == newer
    assert latest_output_dir(load_run_config("recognition", "ssv1")) is None


@pytest.mark.processes  # the run and its two loader workers
def test_sigterm_to_the_process_group_stops_cleanly(in_tmp, tiny_overrides) -> None:
    """What `timeout`, SLURM and Kubernetes do: SIGTERM to the run and its loader workers."""
    store = f"sqlite:///{in_tmp / 'mlflow.db'}"
    sets = tiny_overrides(
        "out",
        **{"data.num_workers": 2, "solver.epochs": 50, "tracking.enabled": True},
    )
    command = [sys.executable, "-m", "s4v_orchestration", "run", "recognition"]
    command += ["--dataset", "synthetic", "--tracking-uri", store, *_sets(sets)]
    run = subprocess.Popen(
        command, cwd=in_tmp, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 300
    while _loader_workers(run.pid) < 2:  # the validation loader's workers stay alive
        assert run.poll() is None, run.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.2)
    time.sleep(2.0)
    os.killpg(run.pid, signal.SIGTERM)
    _, err = run.communicate(timeout=180)
    assert run.returncode == 130, err
    assert "killed by signal" not in err, err
    assert "Traceback" not in err, err
    assert "--resume" in err
    client = MlflowClient(store)
    [record] = client.search_runs(
        [client.get_experiment_by_name("recognition-synthetic").experiment_id]
    )
    assert record.info.status == "KILLED"


def _loader_workers(pid: int) -> int:
    return sum("s4v_orchestration" in " ".join(p.cmdline()) for p in psutil.Process(pid).children())


def test_convert_says_an_s4v_checkpoint_is_one_already(in_tmp) -> None:
    source = in_tmp / "best.pt"
    torch.save({"format": "s4v-checkpoint", "version": 1, "model": {}}, source)
    result = _invoke(
        [
            "convert",
            "side4video",
            str(source),
            "out/new.pt",
            "--preset",
            "tiny",
            "--num-classes",
            "8",
        ]
    )
    assert result.exit_code == 2, result.output
    assert "is already an s4v checkpoint" in result.output
    assert "not a tensor" not in result.output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--device", "cuda:7"], "device: 'cuda:7' was asked for but CUDA is not available"),
        (["--batch-size", "64"], "the training set is too small for batch_size 64"),
        (["--output-dir", "afile/out"], "output_dir: cannot create"),
        (["--pretrained", "/nonexistent.pt"], "model.pretrained: no weights file"),
    ],
)
def test_bad_run_inputs_are_one_line_errors_and_leave_no_mlflow_run(
    in_tmp, tiny_overrides, extra, message
) -> None:
    (in_tmp / "afile").write_text("a file, not a folder")
    store = f"sqlite:///{in_tmp / 'mlflow.db'}"
    sets = tiny_overrides("out", **{"tracking.enabled": True})
    replaced = (
        {"--batch-size": "data.batch_size=", "--output-dir": "output_dir="}[extra[0]]
        if extra[0] in ("--batch-size", "--output-dir")
        else None
    )
    sets = [s for s in sets if replaced is None or not s.startswith(replaced)]  # --set wins
    command = ["run", "recognition", "--dataset", "synthetic", "--tracking-uri", store]
    result = _invoke([*command, *_sets(sets), *extra])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in result.output
    assert "Traceback" not in result.output
    if (in_tmp / "mlflow.db").exists():
        client = MlflowClient(store)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert [r.info.status for r in runs] == []


def test_an_empty_list_is_a_one_line_error(in_tmp, tiny_overrides) -> None:
    empty = in_tmp / "empty.txt"
    empty.write_text("\n\n")
    sets = [*tiny_overrides("out"), f"data.val_list={empty}"]
    result = _invoke(["run", "recognition", "--dataset", "synthetic", *_sets(sets)])
    assert result.exit_code == 2, result.output
    assert f"error: {empty}: the list is empty" in " ".join(result.output.split())
    assert "Traceback" not in result.output


def _damaged(checkpoint: Path, out: Path, damage) -> Path:
    state = torch.load(checkpoint, weights_only=True)
    damage(state)
    torch.save(state, out)
    return out


def _grow_first_rows(tensors: dict) -> str:
    key = next(k for k, v in tensors.items() if torch.is_tensor(v) and v.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    return key


def test_a_checkpoint_that_does_not_fit_is_a_one_line_error_naming_it(
    in_tmp, tiny_config, tiny_overrides
) -> None:
    fields = {"solver.epochs": 1, "solver.max_steps": 1, "eval.final_test": False}
    train(tiny_config("first", **fields))
    last = in_tmp / "first" / "last.pt"

    def damage_model(state: dict) -> None:
        _grow_first_rows(state["model"])

    def damage_optimizer(state: dict) -> None:
        first = min(state["optimizer"]["state"])
        state["optimizer"]["state"][first]["exp_avg"] = torch.zeros(3)

    notes = in_tmp / "notes.txt"
    notes.write_text("not a checkpoint\n")
    cases = [
        (damage_model, "weights do not fit the model: wrong shapes (file vs model)"),
        (damage_optimizer, "optimizer state 'exp_avg' of "),
        (None, "not a torch checkpoint"),
    ]
    for number, (damage, message) in enumerate(cases):
        bad = notes if damage is None else _damaged(last, in_tmp / f"bad{number}.pt", damage)
        sets = _sets(tiny_overrides(f"again{number}", **fields))
        result = _invoke(
            ["run", "recognition", "--dataset", "synthetic", *sets, "--resume-from", str(bad)]
        )
        assert result.exit_code == 2, result.output
        [line] = result.output.strip().splitlines()
        assert line.startswith(f"error: {bad}: ") or line.startswith(
            f"error: cannot resume from {bad}: "
        ), line
        assert message in line, line


def test_a_full_disk_is_a_one_line_error_and_keeps_nothing_half_written(
    in_tmp, tiny_overrides
) -> None:
    """`ulimit -f`: the tiny run's checkpoint (about 12 MB) is over the limit, its config is not."""
    store = f"sqlite:///{in_tmp / 'mlflow.db'}"
    sets = _sets(tiny_overrides("out", **{"solver.epochs": 1, "tracking.enabled": True}))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4_000_000, hard))
    try:
        result = _invoke(
            ["run", "recognition", "--dataset", "synthetic", "--tracking-uri", store, *sets]
        )
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert result.exit_code == 2, result.output
    out = in_tmp / "out"
    assert (
        f"error: cannot write {out / 'last.pt'}: File too large (the disk is full, or a "
        "file-size limit or quota is reached)" in " ".join(result.output.split())
    )
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml"]  # no half-written file
    client = MlflowClient(store)
    [record] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert record.info.status == "FAILED"
