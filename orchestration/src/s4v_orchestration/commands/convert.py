"""``s4v convert side4video``: import a released Side4Video checkpoint as an s4v model file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="Convert checkpoints from other code bases into s4v files.", no_args_is_help=True
)


@app.command()
def side4video(
    source: Annotated[
        Path,
        typer.Argument(
            help="The released checkpoint (model_best.pt of github.com/HJYao00/Side4Video).",
            dir_okay=False,
        ),
    ],
    target: Annotated[Path, typer.Argument(help="Where to write the s4v file.", dir_okay=False)],
    preset: Annotated[
        str,
        typer.Option(help="The matching s4v preset, e.g. side4video-b16 (see `s4v models`)."),
    ],
    num_classes: Annotated[
        int,
        typer.Option(min=1, help="Classes of the checkpoint's head: 174 for SSv1/v2, 400 K400."),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="The release's dataset (ssv1, ssv2, k400): stores a run config so that "
            "`s4v eval recognition --checkpoint TARGET` can test it."
        ),
    ] = None,
    pretrained: Annotated[
        str | None,
        typer.Option(
            help="EVA releases only (e.g. --preset side4video-e14): the frozen EVA backbone's "
            "weights, an open_clip tag or a local weights file; default the preset's own tag. "
            "The release's EVA backbone entries are not read (their reference names are "
            "unknown). CLIP-path releases carry their backbone: not allowed for them."
        ),
    ] = None,
) -> None:
    """Convert a released Side4Video recognition checkpoint into an s4v checkpoint.

    The file is read with torch.load(weights_only=True); every key is renamed onto s4v's modules and its shape checked. The output holds the side network and head as training runs save them, plus the frozen backbone, so it needs no other file. For an EVA preset the backbone comes from --pretrained instead of the release.
    """
    from s4v_orchestration.overrides import load_run_config
    from s4v_recognition import convert_side4video_checkpoint, get_preset
    from s4v_recognition.checkpoints import is_eva_preset

    # One absolute path for both the backbone identity and the run config, so that they match.
    source = source.resolve()
    if pretrained is not None and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())
    try:
        eva = is_eva_preset(preset)
        extra = {}
        if dataset is not None:
            overrides = [f"model.preset={preset}", "model.method=side4video"]
            shortcuts = []
            if eva:  # the backbone is rebuilt from the weights it was loaded from
                backbone = pretrained if pretrained is not None else get_preset(preset).pretrained
                shortcuts.append(("model.pretrained", backbone, "--pretrained"))
            else:  # the backbone is rebuilt from the release itself (same weights and identity)
                overrides.append(f"model.pretrained={source}")
            config = load_run_config(
                "recognition", dataset, overrides=overrides, shortcuts=shortcuts
            )
            extra["config"] = config.model_dump(mode="json")
        model = convert_side4video_checkpoint(
            source, target, preset, num_classes, pretrained=pretrained, extra=extra
        )
    except (ValueError, FileNotFoundError) as error:
        err_console.print(f"[bold red]error:[/bold red] {error}", highlight=False)
        raise typer.Exit(2) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"[bold]wrote[/bold] {target}", highlight=False)
    console.print(f"  preset      {preset} ({model.preset.backbone}, {model.num_frames} frames)")
    console.print(f"  classes     {num_classes}")
    console.print(f"  trainable   {trainable:,} parameters")
    identity = model.backbone_identity
    if eva:  # the release gave the side network and head, `pretrained` the backbone
        console.print(f"  source      {source} (side network and head)", highlight=False)
        sha = f" (sha256 {identity['sha256'][:16]}...)" if identity["sha256"] else ""
        weights = identity["pretrained"] or "random weights"
        console.print(f"  backbone    {identity['name']} from {weights}{sha}", highlight=False)
    else:
        console.print(f"  source      {source} (sha256 {identity['sha256'][:16]}...)")
    if dataset is not None:
        console.print(f"  evaluate    s4v eval recognition --checkpoint {target}", highlight=False)
