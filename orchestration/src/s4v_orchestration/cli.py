"""The ``s4v`` command line: a thin layer that parses, validates and calls library code."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer
from rich.console import Console

from s4v_orchestration import __version__
from s4v_orchestration.commands import bench_predict as bench_predict_command
from s4v_orchestration.commands import bench_sweep as bench_sweep_command
from s4v_orchestration.commands import convert as convert_command
from s4v_orchestration.commands import eval as eval_command
from s4v_orchestration.commands import export as export_command
from s4v_orchestration.commands import models as models_command
from s4v_orchestration.commands import predict as predict_command
from s4v_orchestration.commands import run as run_command
from s4v_orchestration.commands import runs as runs_command
from s4v_orchestration.commands import search as search_command
from s4v_orchestration.commands import sweep as sweep_command
from s4v_orchestration.commands import ui as ui_command
from s4v_orchestration.commands.bench import bench_app
from s4v_orchestration.commands.data import data_app
from s4v_orchestration.paths import default_cache_dir, default_data_root, default_tracking_uri

app = typer.Typer(
    name="s4v",
    help=(
        "Side4Video: adapt a frozen CLIP ViT to video with a light spatial-temporal side network.\n\n"
        "Train and evaluate action recognition and text-video retrieval, prepare data, sweep "
        "hyperparameters with Ray Tune and compare runs in MLflow."
    ),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)
console = Console()

app.add_typer(run_command.app, name="run")
app.add_typer(eval_command.app, name="eval")
app.add_typer(data_app, name="data")
app.command("models")(models_command.models)
app.add_typer(convert_command.app, name="convert")
app.add_typer(bench_app, name="bench")
bench_app.command("sweep")(bench_sweep_command.sweep)
bench_app.command("predict")(bench_predict_command.predict)
app.command("sweep")(sweep_command.sweep)
app.command("runs")(runs_command.runs)
app.command("ui")(ui_command.ui)
app.command("predict")(predict_command.predict)
app.command("export")(export_command.export)
app.command("index")(search_command.index)
app.command("search")(search_command.search)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"s4v {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    show_version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the s4v version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Side4Video experiments: recognition, retrieval, data preparation, sweeps and run tracking."""


def _pkg_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "not installed"


@app.command()
def doctor() -> None:
    """Print versions, the compute device and the default folders and tracking store."""
    import torch

    from s4v_data import default_backend

    rows: list[tuple[str, str]] = []
    rows.append(("python", f"{platform.python_version()} ({platform.python_implementation()})"))
    for label, dist in [
        ("torch", "torch"),
        ("torchvision", "torchvision"),
        ("open_clip", "open_clip_torch"),
        ("decord", "decord"),
        ("pyav", "av"),
        ("ray", "ray"),
        ("mlflow", "mlflow"),
    ]:
        rows.append((label, _pkg_version(dist)))
    rows.append(("video decoder", default_backend()))
    if torch.cuda.is_available():
        names = ", ".join(
            f"{i}: {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())
        )
        rows.append(("cuda", f"available (CUDA {torch.version.cuda}); {names}"))
    else:
        rows.append(("cuda", "not available; training runs on the CPU"))
    rows.append(("torch threads", str(torch.get_num_threads())))
    rows.append(("tracking uri", default_tracking_uri()))
    rows.append(("data root", str(default_data_root())))
    rows.append(("cache dir", str(default_cache_dir())))
    console.print(f"[bold]s4v {__version__}[/bold]")
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        # soft_wrap keeps long paths on one line so they can be copied.
        console.print(f"  [bold]{label:<{width}}[/bold]  {value}", soft_wrap=True, highlight=False)


def main() -> None:
    app()
