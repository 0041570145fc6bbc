"""``s4v bench memory`` for a model too large to build here: the training-memory plan.

For ``side4video-e14`` (4.35 B frozen parameters) the command estimates instead of measuring a
full training step: :mod:`s4v_recognition.bench.memory_plan` counts the weights on the meta device
and measures the saved activations on depth-reduced builds; this module prints, plots and writes
it. On CUDA it measures the real peak of the real model (:func:`measure_training_peak`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from s4v_recognition.bench.memory_plan import MemoryPlan

console = Console()
err_console = Console(stderr=True)

PLAN_ABOVE_PARAMS = 1e9
CAPACITIES_GIB = (24, 80)  # the cards the memory plan sizes a batch for


def _fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/bold red] {message}", highlight=False)
    raise typer.Exit(2)


def plan_wanted(plan: bool | None, preset: str, num_classes: int) -> bool:
    """--plan as given; by default whether the model has more than PLAN_ABOVE_PARAMS parameters."""
    if plan is not None:
        return plan
    from s4v_recognition import count_parameters

    try:
        return count_parameters(preset, num_classes)[1] > PLAN_ABOVE_PARAMS
    except ValueError as error:
        _fail(str(error))


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def memory_plan(
    wide: Console,
    *,
    preset: str,
    frames: int,
    batches: str,
    num_classes: int,
    precision: str,
    checkpointing: bool,
    device: str | None,
    out: Path,
) -> None:
    """Estimate (CPU) or measure (CUDA) the training memory of ``preset``; print and write it."""
    import torch

    from s4v_recognition.bench.measure import PRECISIONS
    from s4v_recognition.presets import get_preset

    try:
        get_preset(preset)
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError as error:
        _fail(str(error) if "preset" in str(error) else f"--batches: {error}")
    if not sizes or min(sizes) < 1:
        _fail(f"--batches must list positive batch sizes, got {batches!r}")
    if precision not in PRECISIONS:
        _fail(f"precision must be one of {', '.join(PRECISIONS)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    stem = (
        f"memory-plan-{preset}-{precision}-{frames}f{'-ckpt' if checkpointing else ''}"
        f"{'-cuda' if device.startswith('cuda') else ''}"
    )
    settings = {
        "preset": preset,
        "num_frames": frames,
        "batch_sizes": list(sizes),
        "num_classes": num_classes,
        "precision": precision,
        "checkpointing": checkpointing,
        "optimizer": "AdamW",
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    out.mkdir(parents=True, exist_ok=True)
    if device.startswith("cuda"):
        _measured_plan(wide, settings, out / f"{stem}.json")
        return
    from s4v_recognition.bench.memory_plan import estimate_training_memory

    with console.status(f"{preset}: measuring depth-reduced builds on the CPU"):
        plan = estimate_training_memory(
            preset,
            num_frames=frames,
            batch_sizes=sizes,
            precision=precision,
            checkpointing=checkpointing,
            num_classes=num_classes,
        )
    wide.print(_plan_table(plan))
    largest = {f"{gib} GiB": plan.largest_batch(gib * 2**30) for gib in CAPACITIES_GIB}
    for line in _plan_notes(plan, largest):
        wide.print(line, highlight=False, soft_wrap=True)
    json_path, png_path = out / f"{stem}.json", out / f"{stem}.png"
    json_path.write_text(
        json.dumps(
            {
                "settings": settings,
                "kind": "estimate",
                "plan": plan.as_dict(),
                "batches": [
                    {**asdict(b), "total_gib": b.total_bytes / 2**30} for b in plan.batches
                ],
                "largest_batch": largest,
            },
            indent=2,
        )
    )
    _plot_plan(plan, png_path)
    wide.print(f"wrote {json_path} and {png_path}", highlight=False, soft_wrap=True)


def _plan_table(plan: MemoryPlan) -> Table:
    """Rows: each part of the estimate with where it comes from; one column per batch size."""
    mode = "fp32" if plan.precision == "fp32" else f"{plan.precision} autocast"
    table = Table(
        title=f"{plan.preset}: estimated training memory (GiB), {plan.num_frames} frames, {mode}, "
        f"{'side-block checkpointing, ' if plan.checkpointing else ''}AdamW, K={plan.num_classes}"
    )
    table.add_column("part")
    table.add_column("source")
    for b in plan.batches:
        table.add_column(f"batch {b.batch_size}", justify="right")
    frozen_dtype = plan.frozen_weight_bytes // max(plan.frozen_params, 1)
    depths = sorted({m.depth for m in plan.measurements})
    static = [
        (
            "frozen backbone weights",
            f"counted: {plan.frozen_params:,} x {frozen_dtype} B",
            plan.frozen_weight_bytes,
        ),
        (
            "side network + head weights",
            f"counted: {plan.trainable_params:,} x 4 B (fp32)",
            plan.trainable_weight_bytes,
        ),
        ("gradients", "counted: trainable x 4 B (fp32)", plan.gradient_bytes),
        (
            "optimizer state (AdamW)",
            "counted: trainable x 8 B (2 fp32 moments)",
            plan.optimizer_bytes,
        ),
        ("buffers (BatchNorm statistics)", "counted", plan.buffer_bytes),
    ]
    for name, source, value in static:
        table.add_row(name, source, *[_gib(value) for _ in plan.batches])
    table.add_row(
        "saved for backward",
        f"measured at depths {depths[0]} and {depths[1]}, batch 1-3; fitted, at "
        f"{plan.side_blocks} side blocks",
        *[_gib(b.saved_bytes) for b in plan.batches],
    )
    if plan.checkpointing:
        table.add_row(
            "transient: recomputed side block",
            "measured: per block, without checkpointing less with",
            *[_gib(b.recompute_bytes) for b in plan.batches],
        )
    table.add_row(
        "transient: backbone layer forward",
        f"computed from shapes ({plan.token_dtype} residual stream)",
        *[_gib(b.backbone_layer_bytes) for b in plan.batches],
    )
    if plan.autocast_copy_bytes:
        table.add_row(
            "transient: autocast weight copies",
            "computed: trainable x 2 B (upper bound)",
            *[_gib(b.autocast_copy_bytes) for b in plan.batches],
        )
    table.add_row(
        "CUDA context + allocator slack",
        "assumed",
        *[_gib(plan.reserve_bytes) for _ in plan.batches],
    )
    table.add_section()
    table.add_row(
        "[bold]total[/bold]", "", *[f"[bold]{_gib(b.total_bytes)}[/bold]" for b in plan.batches]
    )
    return table


def _plan_notes(plan: MemoryPlan, largest: dict[str, int]) -> list[str]:
    """What the table does not say: the paper's number, the batch that fits, the checks."""
    notes = []
    paper = plan.as_dict()["paper"]
    if paper:
        notes.append(
            f"paper: {paper}; the figure states no batch size (the reference's configs: batch 8 "
            "per GPU on Something-Something, 1 on Kinetics-400, AMP)"
        )
    fits = ", ".join(f"{batch} videos on {card}" for card, batch in largest.items())
    notes.append(f"largest batch that fits (estimate): {fits}")
    notes.append(
        f"saved bytes linear in the batch: the fit is off by {100 * plan.linearity_error:.2f} % "
        "at batch 3; transients summed although they never coexist (an upper bound)"
    )
    how = "in fp32" if plan.precision == "fp32" else "under CPU autocast with CUDA's fp32 ops"
    notes.append(
        f"activations measured on random weights {how}; on a CUDA device this command measures "
        "the real peak of the real model instead"
    )
    return notes


def _plot_plan(plan: MemoryPlan, path: Path) -> None:
    """Stacked bars per batch size: weights, gradients + optimizer, saved, transient, reserve."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(5, 1.4 * len(plan.batches) + 3), 4), layout="constrained")
    axes = figure.subplots()
    names = [f"batch {b.batch_size}" for b in plan.batches]
    parts = [
        ("weights", [plan.weight_bytes + plan.buffer_bytes] * len(names), "#2b7bba"),
        (
            "gradients + AdamW",
            [plan.gradient_bytes + plan.optimizer_bytes] * len(names),
            "#7fb8e0",
        ),
        ("saved for backward", [b.saved_bytes for b in plan.batches], "#d95f02"),
        ("transient", [b.transient_bytes for b in plan.batches], "#e6ab02"),
        ("CUDA reserve", [plan.reserve_bytes] * len(names), "#999999"),
    ]
    bottom = [0.0] * len(names)
    for label, values, colour in parts:
        gib = [v / 2**30 for v in values]
        axes.bar(names, gib, bottom=bottom, label=label, color=colour)
        bottom = [a + b for a, b in zip(bottom, gib, strict=True)]
    for card in CAPACITIES_GIB:
        if card < 1.5 * max(bottom):
            axes.axhline(card, color="black", linestyle="--", linewidth=0.8)
            axes.annotate(f"{card} GiB", (0, card), xytext=(2, 2), textcoords="offset points")
    axes.set_ylabel("estimated GPU memory (GiB)")
    axes.legend(fontsize=8)
    axes.set_title(f"{plan.preset}: {plan.num_frames} frames, {plan.precision}", fontsize=9)
    figure.savefig(path, dpi=120)


def _measured_plan(wide: Console, settings: dict, json_path: Path) -> None:
    """CUDA: the real peak of the real model per batch size (not runnable without a GPU)."""
    with console.status(f"{settings['preset']}: measuring the real model on {settings['device']}"):
        peaks = measure_training_peak(
            settings["preset"],
            num_frames=settings["num_frames"],
            batch_sizes=settings["batch_sizes"],
            precision=settings["precision"],
            checkpointing=settings["checkpointing"],
            num_classes=settings["num_classes"],
            device=settings["device"],
        )
    table = Table(title=f"{settings['preset']}: peak CUDA memory of AdamW training (measured)")
    table.add_column("batch", justify="right")
    table.add_column("peak allocated", justify="right")
    for p in peaks:
        table.add_row(
            str(p.batch_size),
            "out of memory" if p.peak_bytes is None else f"{_gib(p.peak_bytes)} GiB",
        )
    wide.print(table)
    largest = _extrapolated_batches(peaks)
    if largest:
        fits = ", ".join(f"{batch} videos on {card}" for card, batch in largest.items())
        wide.print(f"largest batch (extrapolated from the peaks): {fits}", highlight=False)
    json_path.write_text(
        json.dumps(
            {
                "settings": settings,
                "kind": "measured",
                "peaks": [asdict(p) for p in peaks],
                "largest_batch": largest,
            },
            indent=2,
        )
    )
    wide.print(f"wrote {json_path}", highlight=False, soft_wrap=True)


def _extrapolated_batches(peaks: tuple[PeakMeasurement, ...]) -> dict[str, int] | None:
    """The batch that fits each card, on the line through two measured peaks (None: too few)."""
    done = [p for p in peaks if p.peak_bytes is not None]
    if len({p.batch_size for p in done}) < 2:
        return None
    low, high = min(done, key=lambda p: p.batch_size), max(done, key=lambda p: p.batch_size)
    per_video = (high.peak_bytes - low.peak_bytes) / (high.batch_size - low.batch_size)
    base = low.peak_bytes - per_video * low.batch_size
    if per_video <= 0:
        return None
    return {
        f"{card} GiB": max(0, int((card * 2**30 - base) // per_video)) for card in CAPACITIES_GIB
    }


@dataclass(frozen=True, kw_only=True, slots=True)
class PeakMeasurement:
    """The real peak of training steps on a CUDA device (None: out of memory)."""

    batch_size: int
    peak_bytes: int | None


def measure_training_peak(
    preset: str,
    *,
    num_frames: int | None = None,
    batch_sizes: Sequence[int] = (1, 8),
    precision: str = "bf16",
    checkpointing: bool = True,
    num_classes: int = 174,
    device: str = "cuda",
) -> tuple[PeakMeasurement, ...]:
    """Peak allocated CUDA memory of AdamW training steps of the real model, per batch size.

    Each batch size is one :func:`s4v_orchestration.gpu_check.measure_training` row (the model
    built with random weights on the device, side-block checkpointing set exactly to
    ``checkpointing``, a warm-up step that allocates AdamW's state, then a timed step), so the
    peak covers weights, gradients, optimizer state and activations. Out of memory: None.
    """
    import torch

    from s4v_orchestration.gpu_check import RowSpec, measure_training
    from s4v_recognition import get_preset

    frames = num_frames or get_preset(preset).num_frames
    results = []
    for batch in batch_sizes:
        spec = RowSpec(
            section="plan",
            preset=preset,
            method="side4video",
            batch_size=batch,
            num_frames=frames,
            precision=precision,
            checkpointing=checkpointing,
            num_classes=num_classes,
        )
        row = measure_training(spec, torch.device(device), repeats=1)
        results.append(PeakMeasurement(batch_size=batch, peak_bytes=row.peak_bytes))
    return tuple(results)
