"""``s4v index MODEL FOLDER --index DIR`` and ``s4v search DIR "query"``: text search over your
videos with a trained retrieval model."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from s4v_orchestration.commands.common import configure_logging, console, err_console, user_errors
from s4v_orchestration.commands.options import VerboseOption
from s4v_orchestration.commands.predict import (
    BackboneWeightsOption,
    BatchOption,
    FpsOption,
    ModelArgument,
    ModelDeviceOption,
    PrecisionOption,
    ProgressOption,
    StrideOption,
    WindowOption,
    WorkersOption,
    check_choice,
    progress_track,
    raise_usage,
)


@contextmanager
def index_errors() -> Iterator[None]:
    """A :class:`VideoIndexError` as a one-line error and exit status 2."""
    from s4v_orchestration.inference.index import VideoIndexError

    try:
        yield
    except VideoIndexError as err:
        raise_usage(str(err))


def index(
    model: ModelArgument,
    folder: Annotated[
        Path, typer.Argument(help="Folder of videos and frame folders (searched recursively).")
    ],
    index_dir: Annotated[Path, typer.Option("--index", help="Index folder to create or update.")],
    window: WindowOption = None,
    stride: StrideOption = None,
    fps: FpsOption = None,
    batch_size: BatchOption = 16,
    workers: WorkersOption = 2,
    device: ModelDeviceOption = "cpu",
    precision: PrecisionOption = "fp32",
    backbone_weights: BackboneWeightsOption = None,
    progress: ProgressOption = True,
    verbose: VerboseOption = False,
) -> None:
    """Embed every video under FOLDER with a retrieval model into a searchable index.

    Running it again encodes only new or changed files (by size and modification time) and drops
    deleted ones. With --window, each window of a long video gets its own embedding.
    """
    configure_logging(verbose)
    check_choice(precision, ("fp32", "bf16"), "--precision")
    with user_errors(), index_errors():
        from s4v_orchestration.inference import Retriever, load_model
        from s4v_orchestration.inference.index import build_index

        loaded = load_model(model, device=device, weights=backbone_weights)
        if loaded.task != "retrieval":
            raise_usage(f"{model} is a {loaded.task} model; `s4v index` needs a retrieval one")
        retriever = Retriever(loaded, precision=precision)
        ui, track = progress_track(progress, "index")
        with ui:
            update = build_index(
                retriever, model, folder, index_dir, window=window, stride=stride, fps=fps,
                batch_size=batch_size, num_workers=workers, track=track,
            )  # fmt: skip
    if update.rebuilt:
        console.print("the model or the window settings changed: every file was encoded again")
    console.print(
        f"index {index_dir}: {len(update.encoded)} encoded, {len(update.kept)} unchanged, "
        f"{len(update.removed)} removed, {len(update.failed)} unreadable",
        highlight=False,
        soft_wrap=True,
    )
    for _, error in update.failed:
        err_console.print(
            f"[bold red]error:[/bold red] {escape(error)}", highlight=False, soft_wrap=True
        )
    raise typer.Exit(1 if update.failed else 0)


def search(
    index_dir: Annotated[Path, typer.Argument(help="An index folder built by `s4v index`.")],
    query: Annotated[str, typer.Argument(help='What to look for, e.g. "a person opening a jar".')],
    top_k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Files to list.")] = 10,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    shortlist: Annotated[
        int,
        typer.Option(
            min=1,
            help="Over larger indexes, segments the model's similarity head scores after a fast "
            "cosine pass over all of them.",
        ),
    ] = 1000,
    device: ModelDeviceOption = "cpu",
    verbose: VerboseOption = False,
) -> None:
    """Rank the indexed videos by how well they match a text query (best first), with each
    file's best-matching time span."""
    configure_logging(verbose)
    check_choice(fmt, ("table", "json"), "--format")
    with user_errors(), index_errors():
        from s4v_orchestration.inference.index import VideoIndex

        hits = VideoIndex(index_dir, device=device).search(query, top_k, shortlist=shortlist)
    if fmt == "json":
        rows = [
            {"rank": i, "path": h.path, "score": h.score, "start": h.start, "end": h.end}
            for i, h in enumerate(hits, start=1)
        ]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name, justify in (
        ("#", "right"),
        ("score", "right"),
        ("from (s)", "right"),
        ("to (s)", "right"),
        ("file", "left"),
    ):
        table.add_column(name, justify=justify, overflow="fold")
    for rank, hit in enumerate(hits, start=1):
        span = ["-" if t is None else f"{t:.2f}" for t in (hit.start, hit.end)]
        table.add_row(str(rank), f"{hit.score:.4f}", *span, escape(hit.path))
    console.print(table)
