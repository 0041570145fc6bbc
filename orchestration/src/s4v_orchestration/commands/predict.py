"""``s4v predict MODEL INPUT...``: top-k labels of a trained recognizer for video files and frame
folders, as a table, JSON or CSV; one prediction per window for long videos."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from s4v_orchestration.commands.common import configure_logging, console, err_console, user_errors
from s4v_orchestration.commands.options import VerboseOption

if TYPE_CHECKING:
    from s4v_orchestration.inference import Result

FORMATS = ("table", "json", "csv")

ModelArgument = Annotated[
    Path,
    typer.Argument(help="A checkpoint of `s4v run` (best.pt) or a folder written by `s4v export`."),
]
WindowOption = Annotated[
    float | None,
    typer.Option(
        min=0.01, help="Cut long videos into windows of this many seconds (one result per window)."
    ),
]
StrideOption = Annotated[
    float | None,
    typer.Option(min=0.01, help="Seconds between window starts (default: the window, no overlap)."),
]
FpsOption = Annotated[
    float | None,
    typer.Option(
        min=0.01,
        help="Frame rate of frame folders (needed for --window and for times); videos know theirs.",
    ),
]
BatchOption = Annotated[int, typer.Option(min=1, help="Clips per forward pass.")]
WorkersOption = Annotated[
    int, typer.Option(min=0, help="Processes that decode files while the model runs (0: none).")
]
ModelDeviceOption = Annotated[str, typer.Option(help="cpu, cuda, cuda:N or mps.")]
PrecisionOption = Annotated[
    str,
    typer.Option(help="fp32 (exactly as evaluated) or bf16 (autocast; faster where supported)."),
]
BackboneWeightsOption = Annotated[
    Path | None,
    typer.Option(help="The model's local backbone weights file, if it moved (checked by hash)."),
]
ProgressOption = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar over the files.")
]


def check_choice(value: str, choices: tuple[str, ...], option: str) -> None:
    if value not in choices:
        err_console.print(
            f"[bold red]error:[/bold red] {option} must be one of {', '.join(choices)}"
        )
        raise typer.Exit(2)


def output_format(fmt: str | None, out: Path | None) -> str:
    """``--format``, else the ``--out`` file's suffix (``.json``, ``.csv``), else a table."""
    if fmt is None:
        suffix = out.suffix.lower().lstrip(".") if out is not None else ""
        fmt = suffix if suffix in ("json", "csv") else "table"
    check_choice(fmt, FORMATS, "--format")
    return fmt


def progress_track(enabled: bool, description: str):
    """A ``track(items, total)`` that shows a bar on stderr when ``enabled``, and its context."""
    from s4v_orchestration.progress import RunProgress

    ui = RunProgress(enabled=enabled and sys.stderr.isatty())
    return ui, (lambda items, total: ui.track(items, total, description))


def _rows(results: list[Result]) -> list[dict[str, Any]]:
    rows = []
    for result in results:
        if result.error is not None:
            rows.append({"path": result.source, "error": result.error})
            continue
        segments = [
            {
                "start": segment.start,
                "end": segment.end,
                "top_k": [{"label": label, "probability": prob} for label, prob in top],
            }
            for segment, top in zip(result.segments, result.top_k, strict=True)
        ]
        rows.append({"path": result.source, "segments": segments})
    return rows


def _csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "start", "end", "rank", "label", "probability", "error"])
    for row in rows:
        if "error" in row:
            writer.writerow([row["path"], "", "", "", "", "", row["error"]])
            continue
        for segment in row["segments"]:
            for rank, entry in enumerate(segment["top_k"], start=1):
                writer.writerow(
                    [
                        row["path"],
                        "" if segment["start"] is None else f"{segment['start']:.3f}",
                        "" if segment["end"] is None else f"{segment['end']:.3f}",
                        rank,
                        entry["label"],
                        f"{entry['probability']:.6f}",
                        "",
                    ]
                )
    return buffer.getvalue()


def _table(rows: list[dict[str, Any]], windows: bool) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("file", overflow="fold")
    if windows:
        table.add_column("from (s)", justify="right")
        table.add_column("to (s)", justify="right")
    table.add_column("top-1", overflow="fold")
    table.add_column("p", justify="right")
    table.add_column("next", overflow="fold")
    for row in rows:
        if "error" in row:
            cells = [escape(row["path"])] + ["-"] * (2 if windows else 0)
            table.add_row(*cells, "[red]unreadable[/red]", "", escape(row["error"]))
            continue
        for segment in row["segments"]:
            top = segment["top_k"]
            span = [f"{segment['start']:.2f}", f"{segment['end']:.2f}"] if windows else []
            rest = ", ".join(f"{e['label']} {e['probability']:.2f}" for e in top[1:])
            table.add_row(
                escape(row["path"]),
                *span,
                escape(top[0]["label"]),
                f"{top[0]['probability']:.3f}",
                escape(rest),
            )
    return table


def write_output(text: str, out: Path | None) -> None:
    if out is None:
        sys.stdout.write(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        err_console.print(f"wrote {out}", highlight=False)


def report_failures(results: list[Result]) -> int:
    """Name every unreadable file on stderr; the exit status (1 when any failed)."""
    failed = [r for r in results if r.error is not None]
    for result in failed:
        err_console.print(
            f"[bold red]error:[/bold red] {escape(result.error)}", highlight=False, soft_wrap=True
        )
    if failed:
        err_console.print(
            f"{len(failed)} of {len(results)} inputs could not be read", highlight=False
        )
    return 1 if failed else 0


def predict(
    model: ModelArgument,
    inputs: Annotated[
        list[Path],
        typer.Argument(
            help="Video files, frame folders, or folders of them (every video and frame folder "
            "inside is taken)."
        ),
    ],
    top_k: Annotated[int, typer.Option("-k", "--top-k", min=1, help="Labels per prediction.")] = 5,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="table, json or csv (default: from --out's suffix, else table)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Write the results to this file.")] = None,
    window: WindowOption = None,
    stride: StrideOption = None,
    fps: FpsOption = None,
    views: Annotated[
        str | None,
        typer.Option(help="Test views CROPSxCLIPS, e.g. 3x2 (default: the model's eval settings)."),
    ] = None,
    batch_size: BatchOption = 16,
    workers: WorkersOption = 2,
    device: ModelDeviceOption = "cpu",
    precision: PrecisionOption = "fp32",
    backbone_weights: BackboneWeightsOption = None,
    progress: ProgressOption = True,
    verbose: VerboseOption = False,
) -> None:
    """Top-k labels of a trained recognition model for your videos.

    The frames, resize, crops, normalisation and test views come from the model's checkpoint, so
    a video gets exactly the prediction `s4v eval` would give it. Files are decoded in worker
    processes; a file that cannot be read is reported and the others go on (exit status 1).
    """
    configure_logging(verbose)
    fmt = output_format(fmt, out)
    check_choice(precision, ("fp32", "bf16"), "--precision")
    with user_errors():
        from s4v_orchestration.config import parse_views
        from s4v_orchestration.inference import Recognizer, load_model
        from s4v_orchestration.inference.media import expand_inputs

        loaded = load_model(model, device=device, weights=backbone_weights)
        if loaded.task != "recognition":
            raise_usage(f"{model} is a {loaded.task} model; `s4v predict` needs a recognition one")
        if views is not None:
            loaded.preprocessing = loaded.preprocessing.with_views(*parse_views(views))
        recognizer = Recognizer(loaded, precision=precision)
        files = expand_inputs(inputs)
        ui, track = progress_track(progress, "predict")
        with ui:
            results = list(
                recognizer.predict_files(
                    files,
                    k=top_k,
                    window=window,
                    stride=stride,
                    fps=fps,
                    batch_size=batch_size,
                    num_workers=min(workers, len(files)),
                    track=track,
                )
            )
    rows = _rows(results)
    if fmt == "json":
        write_output(json.dumps(rows, indent=2) + "\n", out)
    elif fmt == "csv":
        write_output(_csv(rows), out)
    elif out is None:
        console.print(_table(rows, windows=window is not None))
    else:
        buffer = io.StringIO()
        from rich.console import Console

        Console(file=buffer, width=200).print(_table(rows, windows=window is not None))
        write_output(buffer.getvalue(), out)
    raise typer.Exit(report_failures(results))


def raise_usage(message: str) -> None:
    err_console.print(
        f"[bold red]error:[/bold red] {escape(message)}", highlight=False, soft_wrap=True
    )
    raise typer.Exit(2)
