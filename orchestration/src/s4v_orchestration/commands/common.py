"""Pieces shared by the command modules: logging, error reporting, SIGTERM, the summary table."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

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
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn expected errors into a red message and exit code 2 (1 for a diverged run)."""
    # Imported here so that `s4v --help` does not load torch, open_clip and MLflow.
    from s4v_data.annotations import AnnotationError
    from s4v_orchestration.checkpoint import CheckpointError
    from s4v_orchestration.config import ConfigError
    from s4v_orchestration.tasks.recognition import DataError
    from s4v_orchestration.train import NonFiniteLossError

    expected = (ConfigError, CheckpointError, DataError, AnnotationError, NonFiniteLossError)
    try:
        yield
    except expected as err:
        err_console.print(
            f"[bold red]error:[/bold red] {escape(str(err))}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1 if isinstance(err, NonFiniteLossError) else 2) from None


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
