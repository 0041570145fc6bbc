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
            help="Only for an EVA file saved without its tower (side network and head alone): "
            "the frozen EVA backbone's weights, an open_clip tag or a local weights file; "
            "default the preset's own tag. Releases carry their backbone (CLIP and EVA alike) "
            "and refuse it."
        ),
    ] = None,
) -> None:
    """Convert a released Side4Video recognition checkpoint into an s4v checkpoint.

    The file is read with torch.load(weights_only=True); every key is renamed onto s4v's modules and its shape checked, the frozen backbone's too (an EVA release's tower is mapped onto the preset's open_clip EVA tower). The output holds the side network and head as training runs save them, plus the frozen backbone, so it needs no other file.
    """
    from s4v_orchestration.overrides import load_run_config
    from s4v_recognition import load_side4video_checkpoint
    from s4v_recognition.checkpoints import save_converted_checkpoint

    # One absolute path for both the backbone identity and the run config, so that they match.
    source = source.resolve()
    if pretrained is not None and Path(pretrained).is_file():
        pretrained = str(Path(pretrained).resolve())
    try:
        model = load_side4video_checkpoint(source, preset, num_classes, pretrained=pretrained)
        identity = model.backbone_identity
        from_release = identity["pretrained"] == str(source)
        extra = {}
        if dataset is not None:
            # The run config rebuilds the backbone from the weights it was loaded from.
            overrides = [f"model.preset={preset}", "model.method=side4video"]
            shortcuts = [("model.pretrained", identity["pretrained"], "--pretrained")]
            config = load_run_config(
                "recognition", dataset, overrides=overrides, shortcuts=shortcuts
            )
            extra["config"] = config.model_dump(mode="json")
        save_converted_checkpoint(model, preset, source, target, extra=extra)
    except (ValueError, FileNotFoundError) as error:
        err_console.print(f"[bold red]error:[/bold red] {error}", highlight=False)
        raise typer.Exit(2) from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    console.print(f"[bold]wrote[/bold] {target.resolve()}", highlight=False)
    console.print(f"  preset      {preset} ({model.preset.backbone}, {model.num_frames} frames)")
    console.print(f"  classes     {num_classes}")
    console.print(f"  trainable   {trainable:,} parameters")
    if from_release:  # the release gave every weight, the frozen backbone included
        console.print(f"  source      {source} (sha256 {identity['sha256'][:16]}...)")
    else:  # an EVA file without its tower: the side network and head, `pretrained` the rest
        console.print(f"  source      {source} (side network and head)", highlight=False)
        sha = f" (sha256 {identity['sha256'][:16]}...)" if identity["sha256"] else ""
        weights = identity["pretrained"] or "random weights"
        console.print(f"  backbone    {identity['name']} from {weights}{sha}", highlight=False)
    if dataset is not None:
        console.print(f"  evaluate    s4v eval recognition --checkpoint {target}", highlight=False)
