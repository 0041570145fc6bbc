"""``s4v export CHECKPOINT OUT_DIR``: a trained model as safetensors, config.json and a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from s4v_orchestration.commands.common import configure_logging, console, user_errors
from s4v_orchestration.commands.options import VerboseOption
from s4v_orchestration.commands.predict import BackboneWeightsOption


def export(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint of `s4v run` (best.pt) or an existing export.")
    ],
    out_dir: Annotated[
        Path,
        typer.Argument(help="Folder to write model.safetensors, config.json and README.md to."),
    ],
    backbone_weights: BackboneWeightsOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Export a trained model: what trained as model.safetensors, everything exact loading needs
    as config.json, and a model card (README.md). Loading the export needs no pickle."""
    configure_logging(verbose)
    with user_errors():
        from s4v_orchestration.inference.export import export_model

        folder = export_model(checkpoint, out_dir, weights=backbone_weights)
    console.print(f"exported {checkpoint} to {folder}", soft_wrap=True, highlight=False)
    console.print(f"use it: uv run s4v predict {folder} VIDEO...", soft_wrap=True, highlight=False)
