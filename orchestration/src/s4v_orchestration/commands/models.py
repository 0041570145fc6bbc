"""``s4v models``: every registered model preset and method of each task, with computed sizes."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def _console() -> Console:
    # Piped output is not squeezed to rich's default 80 columns.
    return Console() if sys.stdout.isatty() else Console(width=160)


def _methods_table(task: str, methods: dict) -> Table:
    table = Table(title=f"{task} methods (--set model.method=...)")
    table.add_column("method", no_wrap=True)
    table.add_column("what trains")
    for name, method in methods.items():
        table.add_row(name, method.trains)
    return table


def _count(name: str, num_classes: int, method: str) -> str:
    from s4v_recognition import count_parameters

    try:
        return f"{count_parameters(name, num_classes, method)[0]:,}"
    except ValueError:  # the method does not run on this backbone (e.g. an adapter on EVA)
        return "n/a"


def _recognition_tables(num_classes: int) -> list[Table]:
    from s4v_core.assembly import image_tower_parameters
    from s4v_recognition import METHODS, PRESETS

    presets = Table(title="Recognition presets")
    for column in ("preset", "backbone", "weights"):
        presets.add_column(column, no_wrap=True)
    for column in ("frames", "side width", "image tower"):
        presets.add_column(column, justify="right")
    # One column per method would not fit a terminal: the counts get their own table.
    counts = Table(title=f"Recognition trainable parameters per method ({num_classes}-way head)")
    counts.add_column("preset", no_wrap=True)
    for method in METHODS:
        counts.add_column(method, justify="right", no_wrap=True)
    for name, preset in PRESETS.items():
        presets.add_row(
            name,
            preset.backbone,
            preset.pretrained or "random",
            str(preset.num_frames),
            str(preset.side_dim),
            f"{image_tower_parameters(preset.backbone):,}",
        )
        counts.add_row(name, *(_count(name, num_classes, method) for method in METHODS))
    return [presets, counts, _methods_table("Recognition", METHODS)]


def _retrieval_tables() -> list[Table]:
    from s4v_retrieval import METHODS, PRESETS, count_parameters

    presets = Table(
        title="Retrieval presets (trainable parameters per method; frozen towers: the vision and "
        "text towers' weights as stored)"
    )
    for column in ("preset", "backbone", "weights", "similarity"):
        presets.add_column(column, no_wrap=True)
    for column in ("frames", "words", "side width", "frozen towers", *METHODS):
        presets.add_column(column, justify="right", no_wrap=column == "frozen towers")
    for name, preset in PRESETS.items():
        counts = {method: count_parameters(name, method) for method in METHODS}
        trainable, total = counts["side4video"]
        dtype, size = ("bf16", 2) if preset.frozen_dtype == "bf16" else ("fp32", 4)
        frozen = total - trainable
        presets.add_row(
            name,
            preset.backbone,
            preset.pretrained or "random",
            preset.similarity,
            str(preset.num_frames),
            str(preset.max_words),
            str(preset.side_dim),
            f"{frozen * size / 2**30:.1f} GiB {dtype}",
            *(f"{counts[method][0]:,}" for method in METHODS),
        )
    return [presets, _methods_table("Retrieval", METHODS)]


def models(
    num_classes: Annotated[
        int,
        typer.Option(
            min=1, help="Classes K of the head counted in the trainable parameters (174: SSv1/v2)."
        ),
    ] = 174,
) -> None:
    """List the model presets and methods of each task, with parameter counts.

    Every count is computed from the registry (models built on the meta device, nothing
    allocated), so a newly registered preset or method shows up here as it is.
    """
    console = _console()
    for table in (*_recognition_tables(num_classes), *_retrieval_tables()):
        console.print(table)
    console.print(
        "Train one with `s4v run recognition --set model.preset=PRESET --set model.method=METHOD` "
        "(or `s4v run retrieval ...`); build one with s4v_recognition.build_model(PRESET, K)."
    )
