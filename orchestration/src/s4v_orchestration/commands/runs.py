"""``s4v runs``: a table of MLflow runs (an experiment's, or one sweep's trials) sorted by a metric."""

from __future__ import annotations

from typing import Annotated, Literal

import typer
from rich.console import Console
from rich.table import Table

from s4v_orchestration.paths import default_tracking_uri, missing_sqlite_store

console = Console()
if not console.is_terminal:
    console.width = 200  # a file or a pipe: keep each table row (and its run id) on one line


def runs(
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            "-e",
            help="MLflow experiment to list (e.g. recognition-synthetic). Without it and without "
            "--sweep, the experiments of the store are listed.",
        ),
    ] = None,
    sweep: Annotated[
        str | None,
        typer.Option(
            "--sweep", "-s", help="List the trials of one sweep: its name or parent run id."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="Metric to sort by (default: the sweep's metric, else val/top1 or val/t2v/R1)."
        ),
    ] = None,
    mode: Annotated[
        Literal["max", "min"] | None,
        typer.Option(help="max: larger is better (default for a sweep: the sweep's mode)."),
    ] = None,
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="Extra parameter column, e.g. -p solver.lr (repeatable). By default the "
            "columns are the sweep's searched parameters or the ones that differ between runs.",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many runs.")] = 50,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db)."),
    ] = None,
) -> None:
    """Compare runs: one row per run, best first, with the parameters that tell them apart."""
    from mlflow import MlflowClient

    from s4v_orchestration.run_table import (
        RunLookupError,
        find_sweep,
        list_experiment,
        list_sweep,
        render,
    )

    uri = tracking_uri or default_tracking_uri()
    store = missing_sqlite_store(uri)
    if store is not None:
        # Opening it would create an empty database here.
        console.print(
            f"no MLflow store here: {store} does not exist. Run from the folder you trained "
            "in, or pass --tracking-uri.",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2)
    client = MlflowClient(uri)
    try:
        if sweep is not None:
            listing = list_sweep(
                client, find_sweep(client, sweep, experiment), metric=metric, mode=mode
            )
        elif experiment is not None:
            listing = list_experiment(
                client, experiment, metric=metric, mode=mode or "max", limit=limit
            )
        else:
            _print_experiments(client, uri)
            return
    except RunLookupError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if not listing.rows:
        console.print(f"{listing.title}: no runs yet", highlight=False)
        return
    console.print(render(listing, extra=param or []))


def _print_experiments(client, uri: str) -> None:
    experiments = client.search_experiments()
    table = Table(title=f"experiments in {uri}", title_justify="left")
    table.add_column("experiment")
    table.add_column("runs", justify="right")
    for exp in experiments:
        count = len(client.search_runs([exp.experiment_id], max_results=5000))
        table.add_row(exp.name, str(count))
    console.print(table)
    console.print("list one with: s4v runs -e EXPERIMENT  (or one sweep: s4v runs -s SWEEP)")
