"""``s4v bench``: benchmarks. ``s4v bench memory`` reproduces the paper's memory table (Table 2).

Other command modules add their benchmarks to :data:`app` (e.g. ``s4v bench data``).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

err_console = Console(stderr=True)

app = typer.Typer(help="Benchmarks: training memory and speed, data loading.", no_args_is_help=True)


@app.command()
def memory(
    preset: Annotated[
        str,
        typer.Option(help="Backbone and side width of the side4video method (see `s4v models`)."),
    ] = "side4video-b16",
    methods: Annotated[
        str,
        typer.Option(
            help="Comma-separated methods: side4video, side4video-light, full-finetune, linear-probe."
        ),
    ] = "side4video,side4video-light,full-finetune,linear-probe",
    light_side_dim: Annotated[
        int,
        typer.Option(min=1, help="Side width C of side4video-light (paper Table 2: 128 for B/16)."),
    ] = 128,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 8,
    batch: Annotated[int, typer.Option(min=1, help="Videos per training step.")] = 2,
    num_classes: Annotated[int, typer.Option(min=1, help="Classes K of the head.")] = 174,
    precision: Annotated[
        str, typer.Option(help="fp32, or bf16 / fp16 autocast (mixed precision).")
    ] = "fp32",
    checkpointing: Annotated[
        bool,
        typer.Option(help="Recompute side blocks (all ViT blocks for full-finetune) in backward."),
    ] = False,
    repeats: Annotated[
        int,
        typer.Option(min=1, help="Timed steps per method after one warm-up; the median is shown."),
    ] = 3,
    threads: Annotated[
        int | None, typer.Option(min=1, help="torch CPU threads (default: torch's choice).")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu or cuda[:N] (default: cuda when available).")
    ] = None,
    out: Annotated[
        Path, typer.Option(help="Folder for the JSON results and the PNG chart.", file_okay=False)
    ] = Path("bench"),
) -> None:
    """Measure training memory and speed of Side4Video and its baselines on random data.

    For each method one training step (forward, cross-entropy, backward) with random weights: total and trainable parameters, the bytes autograd saves for backward (each storage once, parameters excluded), the median forward+backward time and, on CUDA, the peak allocated memory. Prints a table and writes JSON and a PNG bar chart into --out.
    """
    import torch

    from s4v_recognition.benchmark import MemoryBenchConfig, run_memory_bench

    if threads is not None:
        torch.set_num_threads(threads)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        config = MemoryBenchConfig(
            preset=preset,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            light_side_dim=light_side_dim,
            num_frames=frames,
            batch_size=batch,
            num_classes=num_classes,
            precision=precision,
            grad_checkpointing=checkpointing,
            repeats=repeats,
            device=device,
        )
    except ValueError as error:
        err_console.print(f"[bold red]error:[/bold red] {error}", highlight=False)
        raise typer.Exit(2) from None

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(config.methods) * (config.repeats + 1))
        results = run_memory_bench(config, on_step=lambda: progress.advance(task))

    settings = {
        **{k: getattr(config, k) for k in config.__slots__},
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device)
        if device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }
    table = Table(
        title=(
            f"{preset}: {batch} videos x {frames} frames, {precision}, "
            f"{'side-block checkpointing, ' if checkpointing else ''}{settings['threads']} threads, "
            f"median of {repeats}"
        )
    )
    for column in (
        "method",
        "C",
        "params",
        "trainable",
        "saved for backward",
        "fwd+bwd",
        "CPU time",
    ):
        table.add_column(column, justify="left" if column == "method" else "right")
    cuda = any(r.cuda_peak_bytes is not None for r in results)
    if cuda:
        table.add_column("CUDA peak", justify="right")
    for r in results:
        row = [
            r.method,
            str(r.side_dim or "-"),
            f"{r.total_params / 1e6:.1f} M",
            f"{r.trainable_params / 1e6:.2f} M",
            f"{r.saved_mib:,.1f} MiB",
            f"{r.median_seconds:.3f} s",
            f"{r.median_cpu_seconds:.2f} s",
        ]
        if cuda:
            row.append(f"{(r.cuda_peak_bytes or 0) / 2**30:.2f} GiB")
        table.add_row(*row)
    # Piped output is not squeezed to rich's default 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(table)

    out.mkdir(parents=True, exist_ok=True)
    stem = f"memory-{preset}-{precision}-b{batch}x{frames}{'-ckpt' if checkpointing else ''}"
    json_path = out / f"{stem}.json"
    json_path.write_text(
        json.dumps({"settings": settings, "results": [r.as_dict() for r in results]}, indent=2)
    )
    png_path = out / f"{stem}.png"
    _plot(results, png_path, table.title, cuda)
    console.print(f"wrote {json_path} and {png_path}", highlight=False, soft_wrap=True)


def _plot(results: list, path: Path, title: str, cuda: bool) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), layout="constrained")
    axes = figure.subplots()
    names = [r.method for r in results]
    if cuda:
        values = [(r.cuda_peak_bytes or 0) / 2**30 for r in results]
        axes.set_ylabel("peak CUDA memory (GiB)")
    else:
        values = [r.saved_mib for r in results]
        axes.set_ylabel("saved for backward (MiB)")
    bars = axes.bar(names, values, color=["#2b7bba", "#7fb8e0", "#d95f02", "#999999"][: len(names)])
    axes.bar_label(bars, fmt="%.1f" if cuda else "%.0f")
    axes.set_title(title, fontsize=9)
    figure.savefig(path, dpi=120)
