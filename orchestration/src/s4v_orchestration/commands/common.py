"""Pieces shared by the command modules: logging, error reporting, SIGTERM, shortcut options and
the summary table with its metric rows."""

from __future__ import annotations

import errno
import logging
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from s4v_orchestration.overrides import Shortcut

console = Console()
err_console = Console(stderr=True)


def configure_logging(verbose: bool = False) -> None:
    """Warnings (and s4v's info lines with ``verbose``) through rich; quiet MLflow/alembic chatter."""
    logging.basicConfig(
        level=logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False)],
        force=True,
    )
    if verbose:
        for name in (
            "s4v_orchestration",
            "s4v_data",
            "s4v_core",
            "s4v_recognition",
            "s4v_retrieval",
        ):
            logging.getLogger(name).setLevel(logging.INFO)
    # MLflow sets its own logger to INFO (with a handler of its own) when it is first imported,
    # which would undo a level set before: import it first, then quiet it.
    import mlflow  # noqa: F401

    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


# errno values of a write that found no room: a full disk, a file-size limit (`ulimit -f`), a quota.
_NO_ROOM = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


@contextmanager
def user_errors(after_no_room: str = "") -> Iterator[None]:
    """Turn expected errors into a red message and exit code 2 (1 for a diverged run).

    A write that found no room (full disk, file-size limit, quota) is one of them: the message
    names the file and ends with ``after_no_room`` (what to do next, e.g. how to resume).
    """
    # Imported here so that `s4v --help` does not load torch, open_clip and MLflow.
    from s4v_core.weights import WeightsFileError
    from s4v_data.annotations import AnnotationError
    from s4v_data.dataset_file import DatasetFileError
    from s4v_data.files import DataError
    from s4v_orchestration.config import ConfigError
    from s4v_orchestration.tracking import TrackingStoreError
    from s4v_orchestration.train import NonFiniteLossError

    expected = (
        ConfigError,
        WeightsFileError,
        DataError,
        AnnotationError,
        DatasetFileError,
        NonFiniteLossError,
        TrackingStoreError,
    )
    try:
        yield
    except expected as err:
        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1 if isinstance(err, NonFiniteLossError) else 2) from None
    except OSError as err:
        if err.errno not in _NO_ROOM:
            raise
        where = f" {err.filename}" if err.filename else ""
        err_console.print(
            f"[bold red]error:[/bold red] cannot write{escape(where)}: {escape(err.strerror or '')} "
            f"(the disk is full, or a file-size limit or quota is reached){escape(after_no_room)}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(2) from None


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM (a scheduler or ``kill``) like Ctrl-C, so the run is closed as KILLED."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def given(shortcuts: Sequence[Shortcut]) -> list[Shortcut]:
    """The (config path, value, option) shortcuts whose option the user passed (value not None)."""
    return [(path, value, option) for path, value, option in shortcuts if value is not None]


def view_shortcuts(views: str | None) -> list[Shortcut]:
    """``--views CROPSxCLIPS`` as the shortcuts for ``eval.test_crops/clips`` (none without it)."""
    from s4v_orchestration.config import parse_views

    if views is None:
        return []
    with user_errors():
        crops, clips = parse_views(views)
    return [("eval.test_crops", crops, "--views"), ("eval.test_clips", clips, "--views")]


def print_summary(
    title: str, rows: list[tuple[str, str]], run_id: str | None, tracking_uri: str | None
) -> None:
    """The summary table and, for a run recorded in MLflow, how to open it in the MLflow UI."""
    from mlflow import MlflowClient

    from s4v_orchestration.tracking import (
        experiment_url,
        primary_metric,
        run_url,
        ui_command,
    )

    console.print(summary_table(title, rows))
    if run_id is not None:
        client = MlflowClient(tracking_uri)
        experiment_id = client.get_run(run_id).info.experiment_id
        metric = primary_metric(client.get_experiment(experiment_id))
        # Each on its own line, never wrapped, so that it can be copied.
        console.print(f"open the MLflow UI: {ui_command(tracking_uri)}", soft_wrap=True)
        console.print(f"this run: {run_url(tracking_uri, experiment_id, run_id)}", soft_wrap=True)
        console.print(
            f"its experiment, best first: {experiment_url(tracking_uri, experiment_id, metric)}",
            soft_wrap=True,
        )


def summary_table(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left", box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(overflow="fold")
    for name, value in rows:
        table.add_row(name, value)
    return table


def percent(metrics: dict[str, float], key: str) -> str | None:
    value = metrics.get(key)
    return None if value is None else f"{value:.2f} %"


def recognition_rows(
    metrics: dict[str, float], *, prefix: str, label: str = "", views: str = ""
) -> list[tuple[str, str]]:
    """Summary rows for top-1 (with ``views``), top-5, mean-class and direction-pair accuracy."""
    names = [
        ("top1", f"{label}top-1{views}"),
        ("top5", f"{label}top-5"),
        ("mean_class", f"{label}mean-class"),
        ("pair_acc", "direction pairs"),
    ]
    rows = [
        (name, value)
        for key, name in names
        if (value := percent(metrics, f"{prefix}{key}")) is not None
    ]
    if unreadable := int(metrics.get(f"{prefix}unreadable", 0)):
        rows.append((f"{label}unreadable", f"{unreadable} videos left out (not decodable)"))
    return rows


def retrieval_rows(metrics: dict[str, float], *, prefix: str) -> list[tuple[str, str]]:
    """Summary rows for R@1/5/10 (percent), MdR and MnR in both directions, when present."""
    rows = []
    for direction, label in (("t2v", "text->video"), ("v2t", "video->text")):
        keys = [f"{prefix}{direction}/R{k}" for k in (1, 5, 10)]
        if not all(key in metrics for key in keys):
            continue
        recalls = " / ".join(f"{metrics[key]:.1f}" for key in keys)
        rows.append(
            (
                f"{label} R@1/5/10",
                f"{recalls} %   MdR {metrics[f'{prefix}{direction}/MdR']:.1f}   "
                f"MnR {metrics[f'{prefix}{direction}/MnR']:.1f}",
            )
        )
    return rows
