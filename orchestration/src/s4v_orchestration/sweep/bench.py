"""Sweep overhead: a sweep against the same trials run one after another with ``s4v run``.

Both sides start from prepared data and log to the same kind of MLflow store; the sweep's time
includes starting Ray, the parent run and every trial process, the sequential side one ``s4v run``
process per trial (each trial's full length: ``s4v run`` has no scheduler to stop it early).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml
from mlflow import MlflowClient

from s4v_orchestration.run_table import list_sweep
from s4v_orchestration.sweep.driver import resolve_base_config, run_sweep
from s4v_orchestration.sweep.spec import load_sweep_file
from s4v_orchestration.tasks import get_task


@dataclass(frozen=True, kw_only=True, slots=True)
class TrialTiming:
    name: str
    params: dict[str, str]  # the searched values
    state: str  # how the trial ended in the sweep
    epochs: str  # epochs it ran in the sweep
    sequential_s: float  # wall time of the same config as one `s4v run`
    sequential_ok: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class SweepBench:
    sweep_s: float
    sequential_s: float
    trials: list[TrialTiming]

    @property
    def ratio(self) -> float:
        return self.sweep_s / self.sequential_s

    @property
    def stopped_early(self) -> int:
        return sum(t.state == "stopped_early" for t in self.trials)


def _override(path: str, value: object) -> str:
    """``path=value`` with the value written as YAML, which ``--set`` reads back unchanged."""
    if isinstance(value, str):
        return f"{path}={value}"
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return f"{path}={text.removesuffix('...').strip()}"


def bench_sweep(
    sweep_file: Path,
    *,
    workdir: Path,
    num_cpus: int | None,
    announce: Callable[[str], None],
) -> SweepBench:
    """Run the sweep, then each of its trials alone with ``s4v run``; return both wall times."""
    spec = load_sweep_file(sweep_file)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    base = resolve_base_config(spec, str(sweep_file))
    get_task(base.task).prepare_data(base, announce=announce)  # not timed, on either side

    announce(f"sweep {spec.name}: {spec.total_trials()} trials")
    started = time.perf_counter()
    outcome = run_sweep(
        spec,
        sweep_text=sweep_file.read_text(),
        storage=str(workdir / "ray"),
        tracking_uri=uri,
        num_cpus=num_cpus,
        verbose=0,
        source=str(sweep_file),
        announce=announce,
    )
    sweep_s = time.perf_counter() - started

    client = MlflowClient(uri)
    rows = sorted(
        list_sweep(client, client.get_run(outcome.parent_run_id)).rows, key=lambda r: r.name
    )
    trials = []
    for row in rows:
        params = {path: row.params[path] for path in spec.search_space if path in row.params}
        command = [sys.executable, "-m", "s4v_orchestration", "run", spec.task]
        command += ["--dataset", spec.dataset, "--tracking-uri", uri]
        command += ["--output-dir", str(workdir / "sequential" / row.name)]
        if spec.config is not None:
            command += ["--config", str(spec.config)]
        for path, value in [*spec.set.items(), *params.items()]:
            command += ["--set", _override(path, value)]
        announce(f"s4v run {row.name} ({', '.join(f'{k}={v}' for k, v in params.items())})")
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        trials.append(
            TrialTiming(
                name=row.name,
                params=params,
                state=row.state,
                epochs=row.epochs,
                sequential_s=time.perf_counter() - started,
                sequential_ok=done.returncode == 0,
            )
        )
    return SweepBench(
        sweep_s=sweep_s, sequential_s=sum(t.sequential_s for t in trials), trials=trials
    )
