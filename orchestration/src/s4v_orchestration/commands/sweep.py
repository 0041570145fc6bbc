"""``s4v sweep SWEEP.yaml``: a Ray Tune hyperparameter search whose trials are MLflow runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from s4v_orchestration.commands.common import configure_logging

console = Console()
if not console.is_terminal:
    console.width = 200  # a file or a pipe: keep each table row (and its run id) on one line


def _storage(value: str) -> str:
    """A local folder becomes absolute (Ray requires it); URIs such as s3://... pass through."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


def sweep(
    sweep_file: Annotated[
        Path,
        typer.Argument(help="Sweep YAML: task, dataset, search_space, ... (examples/sweeps/)."),
    ],
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the interrupted sweep of this file: finished trials are kept, "
            "unfinished and failed ones continue from their last checkpoint.",
        ),
    ] = False,
    address: Annotated[
        str | None,
        typer.Option(
            help="Join a running Ray cluster: 'auto' (one started on this machine with "
            "`ray start --head`), HOST:PORT, or ray://HOST:10001 (Ray Client). "
            "Default: start Ray on this machine for the sweep.",
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store for the parent and trial runs. Use a tracking server "
            "(http://HOST:5000) when trials run on several machines. "
            "Default: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db.",
        ),
    ] = None,
    storage: Annotated[
        str,
        typer.Option(
            help="Folder (or s3://... URI) for Ray's sweep state and trial checkpoints; "
            "the sweep lives in STORAGE/NAME. Must be shared storage on a multi-machine cluster.",
        ),
    ] = "runs/sweeps",
    num_cpus: Annotated[
        int | None,
        typer.Option(min=1, help="CPUs of the local Ray (default: all). Not with --address."),
    ] = None,
    num_gpus: Annotated[
        int | None,
        typer.Option(min=0, help="GPUs of the local Ray (default: all). Not with --address."),
    ] = None,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            min=0,
            max=2,
            help="Ray's own output: 0 none (s4v prints a line per trial event), 1 Ray's status "
            "table and INFO messages, 2 also every reported result and the trials' output.",
        ),
    ] = 0,
    register: Annotated[
        str | None,
        typer.Option(
            help="Register the best trial's model in the MLflow model registry under this name "
            "(a new version, with the alias 'best').",
        ),
    ] = None,
) -> None:
    """Search hyperparameters with Ray Tune; every trial is a nested MLflow run of the sweep."""
    from mlflow import MlflowClient

    from s4v_orchestration.config import ConfigError
    from s4v_orchestration.run_table import list_sweep, render, significant
    from s4v_orchestration.sweep.cluster import ClusterError
    from s4v_orchestration.sweep.driver import SweepError, run_sweep
    from s4v_orchestration.sweep.spec import SweepFileError, load_sweep_file

    configure_logging()  # warnings only: no MLflow/alembic INFO chatter
    _print_trial_events()
    try:
        spec = load_sweep_file(sweep_file)
        metric, mode = spec.objective
        console.print(
            f"[bold]sweep {spec.name}[/bold]: {spec.total_trials()} trials of {spec.task} on "
            f"{spec.dataset}, {mode}imising {metric}, scheduler {spec.scheduler.type}, "
            f"search {spec.search.algorithm}",
            highlight=False,
        )
        outcome = run_sweep(
            spec,
            sweep_text=sweep_file.read_text(),
            storage=_storage(storage),
            tracking_uri=tracking_uri,
            address=address,
            resume=resume,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            verbose=verbose,
            source=str(sweep_file),
            announce=lambda note: console.print(note, highlight=False),
        )
    except (SweepFileError, ConfigError, SweepError, ClusterError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None

    client = MlflowClient(outcome.tracking_uri)
    listing = list_sweep(client, client.get_run(outcome.parent_run_id))
    best_run = outcome.best.mlflow_run_id if outcome.best else None
    console.print(render(listing, highlight=best_run))
    for row in listing.rows:
        if row.error:
            console.print(f"[red]{row.name} failed[/red]: {row.error}", highlight=False)
    console.print(
        f"MLflow: parent run {outcome.parent_run_id} in {outcome.tracking_uri} "
        f"(compare the trials with `s4v ui`)",
        highlight=False,
        soft_wrap=True,
    )
    console.print(f"Ray: {outcome.experiment_path}", highlight=False, soft_wrap=True)
    if outcome.interrupted:
        console.print(
            f"[yellow]interrupted[/yellow]: resume with `s4v sweep {sweep_file} --resume`",
            highlight=False,
        )
        raise typer.Exit(130)
    if outcome.best is None:
        console.print(
            f"[red]no trial reported {outcome.metric}[/red] ({outcome.num_errors} failed)"
        )
        raise typer.Exit(1)
    best = outcome.best
    value = best.metrics.get(outcome.metric)
    console.print(
        f"[bold green]best trial[/bold green] {best.run_name}: {outcome.metric} = {value:.4g} "
        f"at its last epoch ({best.epochs_completed}; trials are ranked by their last epoch)\n"
        f"  params      {', '.join(f'{k}={significant(str(v))}' for k, v in best.params.items())}\n"
        f"  MLflow run  {best.mlflow_run_id}\n"
        f"  checkpoint  {best.checkpoint} (that epoch's)",
        highlight=False,
        soft_wrap=True,
    )
    if register is not None:
        _register(register, best.mlflow_run_id, best.checkpoint, outcome.tracking_uri)


def _register(
    name: str, run_id: str | None, checkpoint: str | Path | None, tracking_uri: str
) -> None:
    """Register the best trial's MLflow model (logging it first if its run has none)."""
    from mlflow.exceptions import MlflowException

    from s4v_orchestration.inference.loading import ModelLoadError
    from s4v_orchestration.inference.pyfunc import ensure_run_model, register_run_model

    if run_id is None:
        console.print(
            "[red]error:[/red] the best trial has no MLflow run to register", highlight=False
        )
        raise typer.Exit(2)
    try:
        ensure_run_model(run_id, checkpoint, tracking_uri=tracking_uri)
        version = register_run_model(run_id, name, tracking_uri=tracking_uri)
    except (MlflowException, ModelLoadError) as exc:
        console.print(
            f"[red]error:[/red] cannot register the model: {exc}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(2) from None
    console.print(
        f"registered the best trial's model as {name} version {version.version} (alias 'best'): "
        f"models:/{name}@best",
        highlight=False,
        soft_wrap=True,
    )


def _print_trial_events() -> None:
    """Show the sweep's one line per trial event on stdout, as plain lines."""
    from s4v_orchestration.sweep.driver import events

    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    events.handlers[:] = [handler]
    events.setLevel(logging.INFO)
    events.propagate = False
