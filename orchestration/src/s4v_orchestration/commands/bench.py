"""``s4v bench``: speed and memory measurements.

``s4v bench data`` times the data loaders; ``s4v bench memory`` reproduces the paper's training
memory table (Table 2) for Side4Video and its baselines.
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from s4v_orchestration.commands.bench_plan import PLAN_ABOVE_PARAMS, memory_plan, plan_wanted
from s4v_orchestration.commands.bench_retrieval import retrieval_memory_plan
from s4v_orchestration.paths import default_cache_dir

if TYPE_CHECKING:
    from s4v_data.synthetic import SyntheticInfo
    from s4v_recognition.bench.comparison import MemoryBenchConfig, MethodResult

bench_app = typer.Typer(help="Measure speed and memory.", no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

RAWFRAMES_OVER_VIDEO = 3.0  # target: rawframes at least 3x the video loader
VIDEO_OVER_RAW = 0.8  # target: the video loader at least 80% of raw decord
TIME_OVER_REFERENCE = 0.85  # target: side4video's step at most 0.85x the reference's
# What `s4v bench memory` measures unless told otherwise (bench.comparison's default).
DEFAULT_METHODS = "side4video,side4video-light,reference-layout,full-finetune,linear-probe"
# Models with more parameters get the memory plan by default (ViT-E/14 does not fit a CPU step).


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
    per_worker: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated worker counts, e.g. 0,1,2,4: also time training clips at each "
            "count (rawframes and video) and print clips/s per worker, to size data.num_workers."
        ),
    ] = None,
    feed: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            help="Training clips/s to keep fed (e.g. a GPU's, from scripts/gpu-check or `s4v "
            "bench memory`): with --per-worker, prints the workers each source needs for it.",
        ),
    ] = None,
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
    if per_worker is not None:
        _print_per_worker(info, per_worker, num_frames, batch_size, repeats, feed)


def _print_per_worker(
    info: SyntheticInfo,
    counts: str,
    num_frames: int,
    batch_size: int,
    repeats: int,
    feed: float | None,
) -> None:
    """Training-clip throughput per worker count, and how many workers keep ``feed`` clips/s fed."""
    from s4v_data.bench import bench_workers, workers_to_feed

    try:
        workers = sorted({int(c) for c in counts.split(",") if c.strip()})
    except ValueError:
        _fail(f"--per-worker takes comma-separated worker counts such as 0,1,2,4, not {counts!r}")
    if not workers or min(workers) < 0:
        _fail(f"--per-worker takes worker counts of 0 or more, not {counts!r}")
    with console.status("timing training clips per worker count"):
        rows = bench_workers(
            info, workers, num_frames=num_frames, batch_size=batch_size, repeats=repeats
        )
    table = Table(title="training clips (random sampling and augmentation) per worker count")
    for column in ("source", "workers", "clips/s", "clips/s per worker"):
        table.add_column(column, justify="left" if column == "source" else "right")
    for row in rows:
        table.add_row(
            row.source, str(row.workers), f"{row.clips_per_s:.1f}", f"{row.per_worker:.1f}"
        )
    console.print(table)
    if feed is not None:
        for source in ("rawframes", "video"):
            needed = workers_to_feed(rows, source, feed)
            if needed is not None:
                console.print(
                    f"{source}: about {needed} workers keep {feed:g} training clips/s fed "
                    "(--set data.num_workers=N; per-worker rates of this machine's cores)"
                )


@bench_app.command("memory")
def memory(
    preset: Annotated[
        str,
        typer.Option(
            "--model",
            "--preset",
            help="Recognition preset: the backbone and side width of the side4video method (see "
            "`s4v models`).",
        ),
    ] = "side4video-b16",
    methods: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated methods: any recognition method of `s4v models` (side4video, "
            "full-finetune, linear-probe, st-adapter, aim, evl, dist, ...) and the variants "
            "side4video-light and reference-layout (the same model computed as the reference "
            "implementation does, the yardstick on this machine). Default: "
            f"{DEFAULT_METHODS}. The memory plan covers side4video only."
        ),
    ] = None,
    light_side_dim: Annotated[
        int,
        typer.Option(min=1, help="Side width C of side4video-light (paper Table 2: 128 for B/16)."),
    ] = 128,
    frames: Annotated[int, typer.Option(min=1, help="Frames per video.")] = 8,
    batch: Annotated[int, typer.Option(min=1, help="Videos per training step.")] = 2,
    num_classes: Annotated[int, typer.Option(min=1, help="Classes K of the head.")] = 174,
    precision: Annotated[
        str | None,
        typer.Option(
            help="fp32, or bf16 / fp16 autocast (mixed precision). Default: fp32 for the "
            "measured table, bf16 for the memory plan."
        ),
    ] = None,
    checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--checkpointing/--no-checkpointing",
            help="Each method's own activation recomputation: side blocks (side4video), adapted "
            "blocks (st-adapter, aim), decoder or temporal blocks (evl, dist), all ViT blocks "
            "(full-finetune). Default: off for the measured table, on for the memory plan.",
        ),
    ] = None,
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
    plan: Annotated[
        bool | None,
        typer.Option(
            "--plan/--no-plan",
            help="Memory plan of side4video training instead of the measured table: on the CPU "
            "an estimate (weights counted on the meta device, activations measured on "
            "depth-reduced copies), on CUDA the real peak of the real model. Default: on for "
            f"models of more than {PLAN_ABOVE_PARAMS / 1e9:g} B parameters (side4video-e14).",
        ),
    ] = None,
    batches: Annotated[
        str, typer.Option(help="Comma-separated batch sizes (videos per step) of the memory plan.")
    ] = "1,8",
    task: Annotated[
        str,
        typer.Option(
            help="recognition, or retrieval: the memory plan of a retrieval EVA preset "
            "(side4video-e14, side4video-eva-l14, tiny-eva; both frozen towers counted)."
        ),
    ] = "recognition",
    out: Annotated[
        Path, typer.Option(help="Folder for the JSON results and the PNG chart.", file_okay=False)
    ] = Path("bench"),
) -> None:
    """Measure training memory and speed of Side4Video and its baselines on random data.

    For each method one training step (forward, cross-entropy, backward) with random weights: total and trainable parameters, the bytes autograd saves for backward (each storage once, parameters excluded), the median forward+backward time and, on CUDA, the peak allocated memory. Prints a table and writes JSON and a PNG bar chart into --out.

    Models too large for that (side4video-e14, or with --plan) get a memory plan instead: the estimated GPU memory of AdamW training at each of --batches (weights, optimizer state, saved activations, transients) and the largest batch that fits 24 GiB and 80 GiB; on CUDA the measured peak of the real model.
    """
    wide = console if sys.stdout.isatty() else Console(width=120)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if task == "retrieval":
        if plan is False or methods is not None:
            _fail("--task retrieval gives the memory plan of side4video only")
        retrieval_memory_plan(
            wide,
            preset=preset,
            batches=batches,
            precision=precision or "bf16",
            checkpointing=True if checkpointing is None else checkpointing,
            out=out,
        )
        return
    if task != "recognition":
        _fail(f"--task must be recognition or retrieval, got {task!r}")
    if plan_wanted(plan, preset, num_classes):
        if methods is not None and methods.replace(" ", "") != "side4video":
            _fail("the memory plan covers the side4video method only; leave out --methods")
        memory_plan(
            wide,
            preset=preset,
            frames=frames,
            batches=batches,
            num_classes=num_classes,
            precision=precision or "bf16",
            checkpointing=True if checkpointing is None else checkpointing,
            device=device,
            out=out,
        )
        return
    config = _memory_config(
        preset=preset,
        methods=methods or DEFAULT_METHODS,
        light_side_dim=light_side_dim,
        frames=frames,
        batch=batch,
        num_classes=num_classes,
        precision=precision or "fp32",
        checkpointing=bool(checkpointing),
        repeats=repeats,
        threads=threads,
        device=device,
    )
    results = _measure_memory(config)
    settings = _memory_settings(config)
    title = _memory_title(config, settings)
    # Piped output is not squeezed to rich's default 80 columns.
    wide.print(_memory_table(title, results))
    comparison = _against_reference(results)
    if comparison:
        _print_comparison(wide, comparison)
    json_path, png_path = _write_memory_report(out, config, settings, results, comparison, title)
    wide.print(f"wrote {json_path} and {png_path}", highlight=False, soft_wrap=True)


def _memory_config(
    *,
    preset: str,
    methods: str,
    light_side_dim: int,
    frames: int,
    batch: int,
    num_classes: int,
    precision: str,
    checkpointing: bool,
    repeats: int,
    threads: int | None,
    device: str | None,
) -> MemoryBenchConfig:
    """The validated measurement plan of ``s4v bench memory`` (exit 2 on a bad option).

    Also sets torch's CPU threads; the device defaults to cuda when available.
    """
    import torch

    from s4v_recognition.bench.comparison import MemoryBenchConfig

    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return MemoryBenchConfig(
            preset=preset,
            methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
            light_side_dim=light_side_dim,
            num_frames=frames,
            batch_size=batch,
            num_classes=num_classes,
            precision=precision,
            grad_checkpointing=checkpointing,
            repeats=repeats,
            device=device or ("cuda" if torch.cuda.is_available() else "cpu"),
        )
    except ValueError as error:
        err_console.print(f"[bold red]error:[/bold red] {error}", highlight=False)
        raise typer.Exit(2) from None


def _measure_memory(config: MemoryBenchConfig) -> list[MethodResult]:
    """Run the benchmark under a progress bar: one warm-up and the timed steps per method."""
    from s4v_recognition.bench.comparison import run_memory_bench

    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("measuring", total=len(config.methods) * (config.repeats + 1))
        return run_memory_bench(config, on_step=lambda: progress.advance(task))


def _memory_settings(config: MemoryBenchConfig) -> dict:
    """The plan plus the machine it ran on: threads, device name, torch version."""
    import torch

    return {
        **{k: getattr(config, k) for k in config.__slots__},
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(config.device)
        if config.device.startswith("cuda")
        else platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }


def _on_cuda(results: list[MethodResult]) -> bool:
    return any(r.cuda_peak_bytes is not None for r in results)


def _memory_title(config: MemoryBenchConfig, settings: dict) -> str:
    """The title of the table and the chart: what one step is and how it was timed."""
    return (
        f"{config.preset}: {config.batch_size} videos x {config.num_frames} frames, "
        f"{config.precision}, "
        f"{'side-block checkpointing, ' if config.grad_checkpointing else ''}"
        f"{settings['threads']} threads, median of {config.repeats}"
    )


def _memory_table(title: str, results: list[MethodResult]) -> Table:
    """One row per method: parameters, bytes saved for backward, step times (and CUDA peak)."""
    table = Table(title=title)
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
    cuda = _on_cuda(results)
    if cuda:
        table.add_column("CUDA peak", justify="right")
    ratios = _against_side4video(results)
    if ratios:
        table.add_column("x side4video", justify="right")
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
        if ratios:
            row.append(f"{ratios[r.method]:.2f}")
        table.add_row(*row)
    return table


def _against_side4video(results: list[MethodResult]) -> dict[str, float]:
    """Each method's memory as a multiple of side4video's: the CUDA peak on a GPU, else the bytes
    saved for backward. Empty when side4video was not measured (or saved nothing)."""
    base = next((r for r in results if r.method == "side4video"), None)

    def memory(r: MethodResult) -> float:
        return float(r.cuda_peak_bytes or 0) if _on_cuda(results) else float(r.saved_bytes)

    if base is None or memory(base) == 0:
        return {}
    return {r.method: memory(r) / memory(base) for r in results}


def _print_comparison(wide: Console, comparison: dict) -> None:
    """side4video against the reference layout, with the verdict on the speed target."""
    verdict = (
        "[green]meets[/green]"
        if comparison["time_ratio"] <= TIME_OVER_REFERENCE
        else "[red]misses[/red]"
    )
    wide.print(
        f"side4video / reference-layout: fwd+bwd {comparison['time_ratio']:.2f}x "
        f"({verdict} the target <= {TIME_OVER_REFERENCE:g}x), saved for backward "
        f"{comparison['saved_ratio']:.2f}x; timings on a shared CPU are noisy",
        highlight=False,
    )


def _write_memory_report(
    out: Path,
    config: MemoryBenchConfig,
    settings: dict,
    results: list[MethodResult],
    comparison: dict | None,
    title: str,
) -> tuple[Path, Path]:
    """The JSON results and the PNG chart in ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        f"memory-{config.preset}-{config.precision}-b{config.batch_size}x{config.num_frames}"
        f"{'-ckpt' if config.grad_checkpointing else ''}"
    )
    json_path = out / f"{stem}.json"
    ratios = _against_side4video(results)
    json_path.write_text(
        json.dumps(
            {
                "settings": settings,
                "results": [
                    {**r.as_dict(), "memory_vs_side4video": ratios.get(r.method)} for r in results
                ],
                "against_reference": comparison,
            },
            indent=2,
        )
    )
    png_path = out / f"{stem}.png"
    _plot(results, png_path, title, _on_cuda(results))
    return json_path, png_path


def _against_reference(results: list) -> dict | None:
    """side4video's step time and saved bytes over the reference layout's, when both ran."""
    by_method = {r.method: r for r in results}
    ours, reference = by_method.get("side4video"), by_method.get("reference-layout")
    if ours is None or reference is None:
        return None
    # The median of per-round ratios: on the CPU the rounds interleave the methods, so each pair
    # of steps ran under the same load.
    pairs = [a / b for a, b in zip(ours.step_seconds, reference.step_seconds, strict=True)]
    return {
        "time_ratio": statistics.median(pairs),
        "saved_ratio": ours.saved_bytes / reference.saved_bytes if reference.saved_bytes else None,
    }


def _plot(results: list, path: Path, title: str, cuda: bool) -> None:
    from matplotlib.figure import Figure

    # Memory on the left, the median step time of the same steps on the right: what a method
    # saves in memory is read against what it costs in time.
    figure = Figure(figsize=(max(10, 2.2 * len(results)), 4), layout="constrained")
    axes, time_axes = figure.subplots(1, 2)
    names = [r.method for r in results]
    if cuda:
        values = [(r.cuda_peak_bytes or 0) / 2**30 for r in results]
        axes.set_ylabel("peak CUDA memory (GiB)")
    else:
        values = [r.saved_mib for r in results]
        axes.set_ylabel("saved for backward (MiB)")
    colours = {
        "side4video": "#2b7bba",
        "side4video-light": "#7fb8e0",
        "reference-layout": "#7570b3",
        "full-finetune": "#d95f02",
        "linear-probe": "#999999",
        # the rivals of the paper's memory table
        "st-adapter": "#e7298a",
        "aim": "#a6761d",
        "evl": "#e6ab02",
        "dist": "#1b9e77",
    }
    colors = [colours.get(name, "#66a61e") for name in names]
    bars = axes.bar(names, values, color=colors)
    axes.bar_label(bars, fmt="%.1f" if cuda else "%.0f")
    time_bars = time_axes.bar(names, [r.median_seconds for r in results], color=colors)
    time_axes.bar_label(time_bars, fmt="%.3f")
    time_axes.set_ylabel("median step time (s)")
    for panel in (axes, time_axes):
        panel.tick_params(axis="x", labelrotation=30 if len(names) > 2 else 0, labelsize=8)
    figure.suptitle(title, fontsize=9)
    figure.savefig(path, dpi=120)


# --- the memory plan (`s4v bench memory --model side4video-e14`) ---------------------------------


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(2)
