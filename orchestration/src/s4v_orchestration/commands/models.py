"""``s4v models``: the named model presets, with their backbone, frames, side width and size."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table


def models(
    num_classes: Annotated[
        int,
        typer.Option(
            min=1, help="Classes K of the head counted in the trainable parameters (174: SSv1/v2)."
        ),
    ] = 174,
) -> None:
    """List the recognition model presets: backbone, frames, side width, trainable parameters."""
    from s4v_recognition import PRESETS
    from s4v_recognition.presets import side4video_trainable_parameters

    table = Table(title=f"Side4Video presets (trainable parameters with a {num_classes}-way head)")
    for column in ("preset", "backbone", "weights"):
        table.add_column(column, no_wrap=True)
    for column in ("frames", "side width", "trainable params"):
        table.add_column(column, justify="right")
    for name, preset in PRESETS.items():
        trainable = side4video_trainable_parameters(name, num_classes)
        table.add_row(
            name,
            preset.backbone,
            preset.pretrained or "random",
            str(preset.num_frames),
            str(preset.side_dim),
            f"{trainable:,}",
        )
    # Piped output is not squeezed to rich's default 80 columns.
    console = Console() if sys.stdout.isatty() else Console(width=120)
    console.print(table)
    console.print(
        "Build one with s4v_recognition.build_model(PRESET, NUM_CLASSES); "
        "train one with `s4v run recognition --set model.preset=PRESET`."
    )
