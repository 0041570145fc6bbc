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
        "set": {**TRIAL_SETTINGS, "data.root": str(data_root)},
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


def _run_sweep(sweep_file: Path, folder: Path, *extra: str, env=None) -> SweepRun:
    result = subprocess.run(
        _sweep_command(sweep_file, folder, *extra),
        capture_output=True,
        text=True,
        env=env,
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


def _assert_finished_children(run: SweepRun, name: str, count: int) -> list:
    parent = _parent(run.client, name)
    assert parent.info.status == "FINISHED"
    finished = [c for c in _children(run.client, parent) if c.info.status == "FINISHED"]
    assert len(finished) == count, _output(run)
    for child in finished:
        assert child.data.tags["s4v.trial.state"] == "completed"
        history = run.client.get_metric_history(child.info.run_id, "val/top1")
        assert [m.step for m in history] == [1, 2]  # one value per epoch, none repeated
        assert child.data.params["solver.epochs"] == "2"
    return finished


# --- a local Ray started by the sweep --------------------------------------------------------


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, synthetic_root: Path) -> SweepRun:
    """Three trials on a local Ray: two good side widths and one (100) the model rejects."""
    folder = tmp_path_factory.mktemp("local-sweep")
    sweep_file = _write_sweep(
        folder,
        "widths",
        synthetic_root,
        search_space={"model.side_dim": {"type": "grid", "values": [64, 128, 100]}},
    )
    return _run_sweep(sweep_file, folder, "--num-cpus", "2")


def test_sweep_records_one_parent_and_a_finished_child_per_trial(local_sweep: SweepRun) -> None:
    assert local_sweep.result.returncode == 0, _output(local_sweep)
    finished = _assert_finished_children(local_sweep, "widths", 2)
    assert {c.data.params["model.side_dim"] for c in finished} == {"64", "128"}
    parent = _parent(local_sweep.client, "widths")
    best = parent.data.tags["s4v.sweep.best_run_id"]
    assert best in {c.info.run_id for c in finished}
    assert parent.data.metrics["val/top1"] == max(c.data.metrics["val/top1"] for c in finished)
    assert Path(parent.data.tags["s4v.sweep.best_checkpoint"]).is_file()
    out = local_sweep.result.stdout
    assert (
        "best trial" in out and best in out and parent.data.tags["s4v.sweep.best_checkpoint"] in out
    )


def test_a_trial_that_raises_is_recorded_failed_and_the_sweep_goes_on(
    local_sweep: SweepRun,
) -> None:
    parent = _parent(local_sweep.client, "widths")
    failed = [c for c in _children(local_sweep.client, parent) if c.info.status == "FAILED"]
    assert len(failed) == 1, _output(local_sweep)
    assert failed[0].data.tags["s4v.trial.state"] == "failed"
    assert "side_dim (100) must be a positive multiple" in failed[0].data.tags["s4v.trial.error"]
    assert "failed" in local_sweep.result.stdout


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
    sweep_file = _write_sweep(
        tmp_path,
        "resumable",
        synthetic_root,
        search_space={"solver.lr": {"type": "grid", "values": [0.003, 0.001]}},
        max_concurrent_trials=1,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep = subprocess.Popen(
        _sweep_command(sweep_file, tmp_path, "--num-cpus", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + 400
    while _completed_trials(uri) < 1:
        assert sweep.poll() is None, sweep.stdout.read()
        assert time.monotonic() < deadline, "the first trial did not finish"
        time.sleep(1)
    os.killpg(sweep.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole group
    out, _ = sweep.communicate(timeout=120)
    assert sweep.returncode == 130, out
    assert "--resume" in out
    client = MlflowClient(uri)
    parent = _parent(client, "resumable")
    assert parent.info.status == "KILLED"
    assert parent.data.tags["s4v.sweep.state"] == "interrupted"
    first = next(c for c in _children(client, parent) if c.info.status == "FINISHED")

    resumed = _run_sweep(sweep_file, tmp_path, "--num-cpus", "2", "--resume")
    assert resumed.result.returncode == 0, _output(resumed)
    finished = _assert_finished_children(resumed, "resumable", 2)
    again = next(c for c in finished if c.info.run_id == first.info.run_id)
    assert again.info.end_time == first.info.end_time  # the finished trial did not run again
    assert {c.data.tags["mlflow.runName"] for c in finished} == {
        c.data.tags["mlflow.runName"]
        for c in _children(client, parent)
        if c.info.status != "KILLED"
    }


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


def test_sweep_on_a_ray_start_head_cluster(
    ray_cluster: Cluster, tmp_path: Path, synthetic_root: Path
) -> None:
    sweep_file = _write_sweep(
        tmp_path,
        "on-cluster",
        synthetic_root,
        search_space={"solver.lr": {"type": "grid", "values": [0.003, 0.001]}},
    )
    run = _run_sweep(sweep_file, tmp_path, "--address", ray_cluster.address, env=ray_cluster.env)
    assert run.result.returncode == 0, _output(run)
    _assert_finished_children(run, "on-cluster", 2)


@pytest.mark.slow
def test_sweep_through_ray_client(
    ray_cluster: Cluster, tmp_path: Path, synthetic_root: Path
) -> None:
    """With ray:// the Tune loop runs on the head and the driver only follows it."""
    sweep_file = _write_sweep(
        tmp_path,
        "via-client",
        synthetic_root,
        search_space={"solver.lr": {"type": "grid", "values": [0.003]}},
    )
    run = _run_sweep(
        sweep_file, tmp_path, "--address", ray_cluster.client_address, env=ray_cluster.env
    )
    assert run.result.returncode == 0, _output(run)
    _assert_finished_children(run, "via-client", 1)
