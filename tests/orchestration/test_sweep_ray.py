"""`s4v sweep` end to end: the real CLI, a real Ray (local, or a `ray start --head` cluster on
loopback started here), real tiny training runs and a real SQLite MLflow store.

Ray starts in seconds but every trial is a fresh process that imports torch, so these tests use few
trials of two tiny epochs and share one sweep between the assertions that can share it.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from mlflow import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

pytestmark = pytest.mark.ray

# Two tiny epochs on the session's synthetic dataset (see conftest.py), no final test.
TRIAL_SETTINGS = {
    "data.synthetic.videos_per_class": 5,
    "data.synthetic.num_frames": 16,
    "data.synthetic.size": 32,
    "data.batch_size": 4,
    "data.num_workers": 0,
    "solver.epochs": 2,
    "solver.warmup_epochs": 1,
    "eval.final_test": False,
    "tracking.system_metrics": False,
    "tracking.log_checkpoint": False,
}


@dataclass(frozen=True)
class SweepRun:
    """A finished `s4v sweep` invocation and where it wrote."""

    result: subprocess.CompletedProcess
    uri: str
    client: MlflowClient


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_sweep(folder: Path, name: str, data_root: Path, **fields) -> Path:
    spec = {
        "name": name,
        "task": "recognition",
        "dataset": "synthetic",
        "set": {
            **{k: v for k, v in TRIAL_SETTINGS.items() if k not in fields["search_space"]},
            "data.root": str(data_root),
        },
        "scheduler": {"type": "fifo"},
        "resources": {"cpu": 1},
        **fields,
    }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _sweep_command(sweep_file: Path, folder: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "s4v_orchestration",
        "sweep",
        str(sweep_file),
        "--storage",
        str(folder / "ray"),
        "--tracking-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "-v",
        "0",
        *extra,
    ]


REPOSITORY = Path(__file__).resolve().parents[2]


def _from_outside(command: list[str]) -> list[str]:
    """``command`` as a user starts it from a folder of their own, outside the repository:
    ``uv run --project REPO`` (Ray's hook for `uv run` used to refuse it)."""
    return ["uv", "run", "--project", str(REPOSITORY), "--no-sync", "python", *command[1:]]


def _run_sweep(
    sweep_file: Path, folder: Path, *extra: str, env=None, outside: bool = False
) -> SweepRun:
    command = _sweep_command(sweep_file, folder, *extra)
    result = subprocess.run(
        _from_outside(command) if outside else command,
        capture_output=True,
        text=True,
        env=env,
        cwd=folder if outside else None,
        timeout=540,
    )
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    return SweepRun(result=result, uri=uri, client=MlflowClient(uri))


def _children(client: MlflowClient, parent) -> list:
    return client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'",
    )


def _parent(client: MlflowClient, name: str):
    runs = client.search_runs(
        [e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`s4v.sweep` = '{name}' and tags.`s4v.kind` = 'sweep'",
    )
    assert len(runs) == 1, [r.info.run_name for r in runs]
    return runs[0]


def _output(run: SweepRun) -> str:
    return f"--- stdout\n{run.result.stdout[-6000:]}\n--- stderr\n{run.result.stderr[-6000:]}"


def _assert_finished_children(run: SweepRun, name: str, values: dict[str, int]) -> list:
    """The sweep's parent is FINISHED with one FINISHED child per trial, each with the metric of
    every epoch once. ``values`` maps the searched parameter's value to the trial's epochs."""
    parent = _parent(run.client, name)
    assert parent.info.status == "FINISHED", _output(run)
    finished = [
        c
        for c in _children(run.client, parent)
        if c.info.status == "FINISHED" and c.data.tags.get("s4v.trial.state") != "superseded"
    ]
    (path,) = parent.data.tags["s4v.sweep.searched_paths"].split(",")
    assert sorted(c.data.params[path] for c in finished) == sorted(values), _output(run)
    for child in finished:
        assert child.data.tags["s4v.trial.state"] == "completed"
        epochs = values[child.data.params[path]]
        steps = [m.step for m in run.client.get_metric_history(child.info.run_id, "val/top1")]
        # Every epoch, in one run. A trial resumed from its last saved epoch may log an epoch it
        # had already run past when it was stopped a second time.
        assert sorted(set(steps)) == list(range(1, epochs + 1))
    return finished


# --- interruption and --resume ---------------------------------------------------------------


def _completed_trials(uri: str) -> int:
    try:
        client = MlflowClient(uri)
        runs = client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string="tags.`s4v.trial.state` = 'completed'",
        )
    except Exception:  # the store is not created yet
        return 0
    return len(runs)


def test_resume_after_ctrl_c_keeps_finished_trials(tmp_path: Path, synthetic_root: Path) -> None:
    """A local Ray started by the sweep from a folder outside the repository (`uv run --project`);
    Ctrl-C once the short trial has finished, then --resume."""
    assert not tmp_path.is_relative_to(REPOSITORY)
    sweep_file = _write_sweep(
        tmp_path,
        "resumable",
        synthetic_root,
        # The long trial must still be running when the short one has finished and Ctrl-C lands:
        # at 4 epochs an idle machine finished both first.
        search_space={"solver.epochs": {"type": "grid", "values": [1, 12]}},
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = subprocess.Popen(
        _from_outside(_sweep_command(sweep_file, tmp_path, "--num-cpus", "2")),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    while _completed_trials(uri) < 1:
        assert sweep.poll() is None, sweep.stdout.read()
        assert time.monotonic() < deadline, "the first trial did not finish"
        time.sleep(0.5)
    # Ctrl-C to `uv run`, which forwards it to the sweep (a signal to the whole group would
    # reach the sweep twice: once directly and once forwarded by uv).
    os.kill(sweep.pid, signal.SIGINT)
    out, _ = sweep.communicate(timeout=180)
    assert sweep.returncode == 130, out
    assert "--resume" in out
    client = MlflowClient(uri)
    parent = _parent(client, "resumable")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["s4v.sweep.state"] == "interrupted"
    children = {c.data.params["solver.epochs"]: c for c in _children(client, parent)}
    short, long = children["1"], children["12"]
    assert short.info.status == "FINISHED" and short.data.tags["s4v.trial.state"] == "completed"
    assert long.info.status == "KILLED" and long.data.tags["s4v.trial.state"] == "unfinished"

    resumed = _run_sweep(sweep_file, tmp_path, "--num-cpus", "2", "--resume", outside=True)
    assert resumed.result.returncode == 0, _output(resumed)
    finished = _assert_finished_children(resumed, "resumable", {"1": 1, "12": 12})
    again = next(c for c in finished if c.info.run_id == short.info.run_id)
    assert again.info.end_time == short.info.end_time  # the finished trial did not run again


# --- a cluster started with `ray start --head` on loopback ------------------------------------


@dataclass(frozen=True)
class Cluster:
    address: str  # HOST:PORT of the head's GCS
    client_address: str  # ray://HOST:PORT of its Ray Client server
    env: dict[str, str]  # environment of a process that may join (the auth token)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """A one-node Ray cluster on 127.0.0.1 with token authentication, as `ray start --head`
    makes it. Stopped, with every process it started, when the module's tests are done."""
    temp_dir = tmp_path_factory.mktemp("ray")
    port, client_port = _free_port(), _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    ray = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray),
            "start",
            "--head",
            "--block",  # stays in the foreground; SIGTERM stops the whole cluster
            "--node-ip-address",
            "127.0.0.1",
            "--port",
            str(port),
            "--ray-client-server-port",
            str(client_port),
            "--num-cpus",
            "2",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
            "--temp-dir",
            str(temp_dir),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    address = f"127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    status = None
    while status is None or status.returncode != 0:
        assert head.poll() is None, head.stdout.read()
        assert time.monotonic() < deadline, "ray start --head did not come up"
        time.sleep(2)
        status = subprocess.run(
            [str(ray), "status", "--address", address], env=env, capture_output=True, text=True
        )
    yield Cluster(address=address, client_address=f"ray://127.0.0.1:{client_port}", env=env)
    head.send_signal(signal.SIGTERM)
    head.wait(timeout=120)


def test_sweep_on_a_ray_start_head_cluster_records_every_trial(
    ray_cluster: Cluster, tmp_path: Path, synthetic_root: Path
) -> None:
    """Two good side widths and one (100) the model rejects: one parent, two finished children
    with per-epoch metrics, one failed child, and the best trial's run and checkpoint."""
    sweep_file = _write_sweep(
        tmp_path,
        "widths",
        synthetic_root,
        search_space={"model.side_dim": {"type": "grid", "values": [64, 128, 100]}},
    )
    run = _run_sweep(sweep_file, tmp_path, "--address", ray_cluster.address, env=ray_cluster.env)
    assert run.result.returncode == 0, _output(run)
    finished = _assert_finished_children(run, "widths", {"64": 2, "128": 2})

    parent = _parent(run.client, "widths")
    failed = [c for c in _children(run.client, parent) if c.info.status == "FAILED"]
    assert len(failed) == 1, _output(run)
    assert failed[0].data.tags["s4v.trial.state"] == "failed"
    assert "side_dim (100) must be a positive multiple" in failed[0].data.tags["s4v.trial.error"]

    best = parent.data.tags["s4v.sweep.best_run_id"]
    assert best in {c.info.run_id for c in finished}
    assert parent.data.metrics["val/top1"] == max(c.data.metrics["val/top1"] for c in finished)
    checkpoint = parent.data.tags["s4v.sweep.best_checkpoint"]
    assert Path(checkpoint).is_file()
    # Ranked and reported on the same epoch: the trials' last, whose checkpoint is reported.
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["epoch"] == 2
    out = run.result.stdout
    assert "best trial" in out and best in out and checkpoint in out
    assert "failed: ValueError: side_dim (100)" in out
    # s4v's one line per trial event, and none of Ray's chatter.
    assert out.count(" started: model.side_dim=") == 3
    assert out.count(" completed after 2 epochs: val/top1 ") == 2
    assert "TensorboardX" not in out + run.result.stderr
    assert "Trial status" not in out and "Configuration for experiment" not in out
