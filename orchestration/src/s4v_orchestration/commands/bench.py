"""``s4v bench``: speed measurements (``s4v bench data`` here; ``s4v bench memory`` from core)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from s4v_orchestration.paths import default_cache_dir

bench_app = typer.Typer(help="Measure speed and memory.", no_args_is_help=True)
console = Console()

RAWFRAMES_OVER_VIDEO = 3.0  # target: rawframes at least 3x the video loader
VIDEO_OVER_RAW = 0.8  # target: the video loader at least 80% of raw decord


@bench_app.command("data")
def data(
    size: Annotated[int, typer.Option(help="Frame size of the benchmark videos (pixels).")] = 128,
    video_frames: Annotated[int, typer.Option(help="Frames per benchmark video.")] = 96,
    videos_per_class: Annotated[
        int, typer.Option(help="Benchmark videos per class (half are timed).")
    ] = 8,
    num_frames: Annotated[int, typer.Option(help="Frames per clip (T).")] = 8,
    batch_size: Annotated[int, typer.Option(help="Clips per loader batch.")] = 8,
    workers: Annotated[
        int, typer.Option(help="Loader worker processes (decord-raw always uses one process).")
    ] = 0,
    repeats: Annotated[int, typer.Option(help="Timed passes; the table shows medians.")] = 5,
    data_dir: Annotated[
        Path | None,
        typer.Option(help="Where the benchmark videos are generated (default: cache dir)."),
    ] = None,
) -> None:
    """Clips/s and frames/s: rawframes vs decoding videos with decord vs raw decord decoding."""
    from s4v_data.bench import bench_data
    from s4v_data.synthetic import generate

    root = data_dir or default_cache_dir() / f"bench-synthetic-{size}px-{video_frames}f"
    try:
        with console.status(f"preparing benchmark videos in {root}"):
            info = generate(
                root,
                seed=0,
                videos_per_class=videos_per_class,
                num_frames=video_frames,
                size=size,
                val_fraction=0.5,
            )
    except (ValueError, FileExistsError) as e:
        console.print(f"[red]error:[/red] {e}", highlight=False)
        raise typer.Exit(2) from None
    with console.status("timing"):
        rows = bench_data(
            info,
            num_frames=num_frames,
            batch_size=batch_size,
            num_workers=workers,
            repeats=repeats,
        )
    table = Table(
        title=f"{len(info.class_names) * videos_per_class // 2} videos of {video_frames} frames "
        f"at {size}x{size}, clips of {num_frames} frames, {workers} loader workers"
    )
    for column in ("source", "clips/s", "frames/s", "min-max clips/s"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for row in rows.values():
        table.add_row(
            row.name,
            f"{row.clips_per_s:.1f}",
            f"{row.frames_per_s:.0f}",
            f"{min(row.runs):.1f}-{max(row.runs):.1f}",
        )
    console.print(table)
    speedup = rows["rawframes"].clips_per_s / rows["video"].clips_per_s
    efficiency = rows["video"].clips_per_s / rows["decord-raw"].clips_per_s
    for label, value, target, unit in [
        ("rawframes / video loader", speedup, RAWFRAMES_OVER_VIDEO, "x"),
        ("video loader / raw decord", efficiency, VIDEO_OVER_RAW, ""),
    ]:
        verdict = "[green]meets[/green]" if value >= target else "[red]misses[/red]"
        console.print(f"{label}: {value:.2f}{unit} ({verdict} the target >= {target:g}{unit})")
    console.print(
        f"medians of {repeats} passes after a warm-up; timings on a shared CPU are noisy",
        style="dim",
    )
