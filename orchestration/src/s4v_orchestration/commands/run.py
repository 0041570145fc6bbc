"""``s4v run <task>``: train (and test) a model from a dataset preset, a YAML file and overrides."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from s4v_orchestration.commands.common import (
    configure_logging,
    console,
    err_console,
    percent,
    sigterm_as_interrupt,
    summary_table,
    user_errors,
)

if TYPE_CHECKING:
    from s4v_orchestration.overrides import Shortcut
    from s4v_orchestration.train import TrainResult

app = typer.Typer(
    help="Train a model end to end: data, training, validation, test and MLflow tracking.",
    no_args_is_help=True,
)


# Options that mean the same in every `s4v run <task>` command.
ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", help="YAML file with any run-config fields; overrides the preset."),
]
PretrainedOption = Annotated[
    str | None,
    typer.Option(
        help="CLIP weights: an open_clip tag such as openai, a local file, or none for "
        "random weights (model.pretrained)."
    ),
]
EpochsOption = Annotated[int | None, typer.Option(help="Training epochs (solver.epochs).")]
DeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps (device).")]
TrackingOption = Annotated[
    bool, typer.Option("--tracking/--no-tracking", help="Record the run in MLflow.")
]
ResumeOption = Annotated[
    bool, typer.Option("--resume", help="Continue from <output-dir>/last.pt after an interruption.")
]
ResumeFromOption = Annotated[
    Path | None, typer.Option(help="Continue from this checkpoint instead.")
]
VerboseOption = Annotated[bool, typer.Option(help="Log s4v's info messages.")]


@app.command()
def recognition(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset preset with its reference recipe: synthetic, ssv1, ssv2 or k400. "
            "synthetic is generated on first use and trains on the CPU in minutes."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one field, e.g. --set solver.lr=3e-4 or --set model.method=linear-probe "
            "(repeatable; applied last).",
        ),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding the prepared dataset (data.root).")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Model preset (frozen CLIP backbone + side network): tiny, side4video-b32, "
            "side4video-b16, side4video-b16-light, side4video-l14 (model.preset)."
        ),
    ] = None,
    pretrained: PretrainedOption = None,
    epochs: EpochsOption = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Videos per process and step (data.batch_size).")
    ] = None,
    device: DeviceOption = None,
    views: Annotated[
        str | None,
        typer.Option(
            help="Views of the final test, CROPSxCLIPS, e.g. 3x2 (eval.test_crops/clips)."
        ),
    ] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoints and reports (default runs/<task>-<dataset>-<preset>-<method>)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db), e.g. "
            "http://localhost:5000 (tracking.uri)."
        ),
    ] = None,
    tracking: TrackingOption = True,
    resume: ResumeOption = False,
    resume_from: ResumeFromOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Train and test an action-recognition model: `s4v run recognition --dataset synthetic`."""
    # Imported here so that `s4v --help` stays fast (no torch / MLflow import).
    from s4v_orchestration.config import parse_views

    configure_logging(verbose)
    shortcuts = _shortcuts(
        [
            ("data.root", data_root, "--data-root"),
            ("model.preset", backbone, "--backbone"),
            ("solver.epochs", epochs, "--epochs"),
            ("data.batch_size", batch_size, "--batch-size"),
            ("device", device, "--device"),
            ("output_dir", output_dir, "--output-dir"),
            ("tracking.uri", tracking_uri, "--tracking-uri"),
        ],
        pretrained=pretrained,
        tracking=tracking,
    )
    started = time.perf_counter()
    with user_errors():
        if views is not None:
            crops, clips = parse_views(views)
            shortcuts += [
                ("eval.test_crops", crops, "--views"),
                ("eval.test_clips", clips, "--views"),
            ]
    result = _train("recognition", dataset, config, overrides, shortcuts, resume, resume_from)

    metrics = result.metrics
    cfg = result.config
    rows = [
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        ("model", f"{cfg.model.preset} / {cfg.model.method}"),
        (
            "best val top-1",
            f"{percent(metrics, 'val/best_top1')} (epoch {int(metrics['best_epoch'])})",
        ),
    ]
    views_text = f"{cfg.eval.test_crops}x{cfg.eval.test_clips}"
    for key, label in [
        ("test/top1", f"test top-1 ({views_text})"),
        ("test/top5", "test top-5"),
        ("test/mean_class", "test mean-class"),
        ("test/pair_acc", "direction pairs"),
    ]:
        if (value := percent(metrics, key)) is not None:
            rows.append((label, value))
    _print_summary(result, rows, started)


@app.command()
def retrieval(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset preset with its reference recipe: synthetic, msrvtt, msvd or vatex. "
            "synthetic (captioned) is generated on first use and trains on the CPU in minutes."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Override one field, e.g. --set retrieval.similarity=meanP or "
            "--set retrieval.train_text=true (repeatable; applied last).",
        ),
    ] = None,
    data_root: Annotated[
        Path | None,
        typer.Option(help="Folder holding the annotation files (data.root)."),
    ] = None,
    media_root: Annotated[
        Path | None,
        typer.Option(
            help="Folder holding the frame folders or videos, if not --data-root "
            "(retrieval.media_root)."
        ),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Model preset (frozen CLIP + side network): tiny, side4video-b32 or "
            "side4video-b16 (model.preset)."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="side4video, or frozen-clip for the same model with the side network off "
            "(plain CLIP frame embeddings) (model.method)."
        ),
    ] = None,
    pretrained: PretrainedOption = None,
    epochs: EpochsOption = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Video-caption pairs per process and step (data.batch_size)."),
    ] = None,
    device: DeviceOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoints and reports (default runs/retrieval-<dataset>-<preset>-<method>)."
        ),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(
            help="MLflow store (default $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db) "
            "(tracking.uri)."
        ),
    ] = None,
    tracking: TrackingOption = True,
    resume: ResumeOption = False,
    resume_from: ResumeFromOption = None,
    verbose: VerboseOption = False,
) -> None:
    """Train and test a text-video retrieval model: `s4v run retrieval --dataset synthetic`."""
    configure_logging(verbose)
    shortcuts = _shortcuts(
        [
            ("data.root", data_root, "--data-root"),
            ("retrieval.media_root", media_root, "--media-root"),
            ("model.preset", backbone, "--backbone"),
            ("model.method", method, "--method"),
            ("solver.epochs", epochs, "--epochs"),
            ("data.batch_size", batch_size, "--batch-size"),
            ("device", device, "--device"),
            ("output_dir", output_dir, "--output-dir"),
            ("tracking.uri", tracking_uri, "--tracking-uri"),
        ],
        pretrained=pretrained,
        tracking=tracking,
    )
    started = time.perf_counter()
    result = _train("retrieval", dataset, config, overrides, shortcuts, resume, resume_from)

    metrics = result.metrics
    cfg = result.config
    rows = [
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        ("model", f"{cfg.model.preset} / {cfg.model.method}"),
        (
            "best val t2v R@1",
            f"{percent(metrics, 'val/best_t2v/R1')} (epoch {int(metrics['best_epoch'])})",
        ),
    ]
    rows += retrieval_rows(metrics, prefix="test/")
    _print_summary(result, rows, started)


def retrieval_rows(metrics: dict[str, float], *, prefix: str) -> list[tuple[str, str]]:
    """Summary rows for R@1/5/10 (percent), MdR and MnR in both directions, when present."""
    rows = []
    for direction, label in (("t2v", "text->video"), ("v2t", "video->text")):
        keys = [f"{prefix}{direction}/R{k}" for k in (1, 5, 10)]
        if not all(key in metrics for key in keys):
            continue
        recalls = " / ".join(f"{metrics[key]:.1f}" for key in keys)
        rows.append(
            (
                f"{label} R@1/5/10",
                f"{recalls} %   MdR {metrics[f'{prefix}{direction}/MdR']:.1f}   "
                f"MnR {metrics[f'{prefix}{direction}/MnR']:.1f}",
            )
        )
    return rows


def _shortcuts(given: list[Shortcut], *, pretrained: str | None, tracking: bool) -> list[Shortcut]:
    """The shortcut options the user actually passed, as (config path, value, option) triples."""
    shortcuts = [(path, value, option) for path, value, option in given if value is not None]
    if pretrained is not None:
        shortcuts.append(("model.pretrained", _none_word(pretrained), "--pretrained"))
    if not tracking:
        shortcuts.append(("tracking.enabled", False, "--no-tracking"))
    return shortcuts


def _print_summary(result: TrainResult, rows: list[tuple[str, str]], started: float) -> None:
    from s4v_orchestration.tracking import ui_command

    cfg = result.config
    rows = [*rows, ("wall time", f"{time.perf_counter() - started:.0f} s")]
    rows.append(("checkpoints", str(cfg.output_dir)))
    if result.run_id is not None:
        rows.append(("MLflow run", f"{result.run_id} (experiment {cfg.tracking.experiment})"))
    console.print(summary_table("run summary", rows))
    if result.run_id is not None:
        # On its own line, never wrapped, so that it can be copied.
        console.print(f"open the MLflow UI: {ui_command(cfg.tracking.uri)}", soft_wrap=True)


def _train(
    task: str,
    dataset: str | None,
    config: Path | None,
    overrides: list[str] | None,
    shortcuts: list[Shortcut],
    resume: bool,
    resume_from: Path | None,
) -> TrainResult:
    """Build the config (preset, YAML, shortcuts, ``--set``) and run the training to the end."""
    from s4v_orchestration.overrides import load_run_config
    from s4v_orchestration.train import run_training

    with user_errors(), sigterm_as_interrupt():
        run_config = load_run_config(
            task, dataset, config, overrides=overrides or [], shortcuts=shortcuts
        ).with_defaults()
        if resume or resume_from is not None:
            resume_path = resume_from or Path(run_config.output_dir) / "last.pt"
            run_config = run_config.model_copy(update={"resume": resume_path})
        try:
            return run_training(run_config, progress=True)
        except KeyboardInterrupt:
            err_console.print(
                "[bold yellow]interrupted.[/bold yellow] Continue with the same command plus "
                f"--resume (checkpoint: {Path(run_config.output_dir) / 'last.pt'})."
            )
            raise typer.Exit(130) from None


def _none_word(value: str | None) -> str | None:
    """``--pretrained none`` means random weights."""
    if value is None or value.lower() in {"none", "null", "random"}:
        return None
    return value
