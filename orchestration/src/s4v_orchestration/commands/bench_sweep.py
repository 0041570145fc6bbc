"""``s4v bench sweep``: the overhead of a Ray Tune sweep over running its trials one by one."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()
if not console.is_terminal:
    console.width = 200  # a file or a pipe: keep each table row on one line

OVERHEAD_TARGET = 1.5  # sweep wall time at most 1.5x the same trials run one by one

DEFAULT_SWEEP = Path("examples/sweeps/synthetic-lr.yaml")


def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="Sweep to time (default: the synthetic example).")
    ] = DEFAULT_SWEEP,
    num_cpus: Annotated[
        int | None, typer.Option(min=1, help="CPUs of the sweep's local Ray (default: all).")
    ] = None,
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder for the MLflow store, Ray state and runs (default: a temp dir)."),
    ] = None,
) -> None:
    """Time a sweep, then the same trials one by one with `s4v run`; print both and the ratio."""
    from s4v_orchestration.sweep.bench import bench_sweep

    folder = workdir or Path(tempfile.mkdtemp(prefix="s4v-bench-sweep-"))
    folder.mkdir(parents=True, exist_ok=True)
    result = bench_sweep(
        sweep_file,
        workdir=folder.resolve(),
        num_cpus=num_cpus,
        announce=lambda note: console.print(note, highlight=False),
    )
    table = Table(title=f"{sweep_file} ({folder})", title_justify="left")
    for column in ("trial", "values", "in the sweep", "s4v run (s)"):
        table.add_column(column)
    for trial in result.trials:
        state = f"{trial.state} @{trial.epochs}" if trial.state == "stopped_early" else trial.state
        seconds = f"{trial.sequential_s:.1f}" + ("" if trial.sequential_ok else " (failed)")
        values = ", ".join(f"{k}={v}" for k, v in trial.params.items())
        table.add_row(trial.name, values, state, seconds)
    console.print(table)
    verdict = "[green]ok[/green]" if result.ratio <= OVERHEAD_TARGET else "[red]over target[/red]"
    console.print(
        f"sweep {result.sweep_s:.1f} s, one by one {result.sequential_s:.1f} s: "
        f"ratio {result.ratio:.2f} (target <= {OVERHEAD_TARGET}) {verdict}; "
        f"{result.stopped_early} of {len(result.trials)} trials stopped early by the scheduler",
        highlight=False,
    )
