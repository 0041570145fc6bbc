"""``s4v bench memory --task retrieval``: the training-memory plan of a retrieval preset.

:mod:`s4v_retrieval.memory_plan` counts the weights (both frozen towers in their stored dtype) on
the meta device and measures the saved activations on depth-reduced copies; this module prints it
and writes it as JSON. EVA presets only (``side4video-e14``, ``side4video-eva-l14``, ``tiny-eva``).
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from s4v_orchestration.commands.bench_plan import CAPACITIES_GIB, _fail


def _gib(value: float) -> str:
    return f"{value / 2**30:.2f}"


def retrieval_memory_plan(
    wide: Console, *, preset: str, batches: str, precision: str, checkpointing: bool, out: Path
) -> None:
    """Estimate the GPU memory of training retrieval ``preset``; print it and write JSON."""
    from s4v_retrieval.memory_plan import estimate_retrieval_memory

    try:
        sizes = tuple(int(b) for b in batches.split(",") if b.strip())
    except ValueError as error:
        _fail(f"--batches: {error}")
    if not sizes or min(sizes) < 1:
        _fail(f"--batches must list positive batch sizes, got {batches!r}")
    try:
        with wide.status(f"{preset}: measuring depth-reduced copies on the CPU"):
            plan = estimate_retrieval_memory(
                preset, precision=precision, checkpointing=checkpointing
            )
    except ValueError as error:
        _fail(str(error))
    mode = "fp32" if precision == "fp32" else f"{precision} autocast"
    table = Table(
        title=f"retrieval {preset}: estimated training memory (GiB), {plan.num_frames} frames, "
        f"{plan.max_words} words, {mode}, "
        f"{'side-block checkpointing, ' if checkpointing else ''}AdamW; batch = pairs per GPU"
    )
    table.add_column("part")
    table.add_column("source")
    for size in sizes:
        table.add_column(f"B={size}", justify="right")
    fixed = [
        (
            f"frozen towers ({plan.frozen_dtype})",
            f"counted: {plan.frozen_vision_params:,} vision + {plan.frozen_text_params:,} text",
            plan.frozen_weight_bytes,
        ),
        (
            "trainable weights + grads + AdamW",
            f"counted: {plan.trainable_params:,} x 16 B",
            plan.trainable_weight_bytes + plan.gradient_bytes + plan.optimizer_bytes,
        ),
        ("buffers + CUDA reserve", "counted + assumed", plan.buffer_bytes + plan.reserve_bytes),
    ]
    for name, source, value in fixed:
        table.add_row(name, source, *[_gib(value) for _ in sizes])
    table.add_row(
        "saved for backward",
        f"measured at depths 2, 4; fit to {plan.side_blocks} side blocks",
        *[_gib(plan.saved_bytes(b)) for b in sizes],
    )
    table.add_row(
        "transients",
        "measured (recomputed block) + computed (one layer, autocast copies)",
        *[_gib(plan.transient_bytes(b)) for b in sizes],
    )
    table.add_row("total", "", *[_gib(plan.total_bytes(b)) for b in sizes], style="bold")
    wide.print(table)
    largest = {f"{gib} GiB": plan.largest_batch(gib * 2**30) for gib in CAPACITIES_GIB}
    wide.print(
        "largest batch per GPU: "
        + ", ".join(f"{k}: {v}" for k, v in largest.items())
        + f" (fit checked at batch 3: {plan.linearity_error:.1%} off)",
        highlight=False,
    )
    out.mkdir(parents=True, exist_ok=True)
    path = (
        out / f"memory-plan-retrieval-{preset}-{precision}{'-ckpt' if checkpointing else ''}.json"
    )
    report = {"kind": "estimate", "plan": plan.as_dict(sizes), "largest_batch": largest}
    path.write_text(json.dumps(report, indent=2))
    wide.print(f"wrote {path}", highlight=False, soft_wrap=True)
