"""``s4v eval <task>``: test a checkpoint with multi-view evaluation and write a report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from s4v_orchestration.commands.common import (
    configure_logging,
    console,
    percent,
    sigterm_as_interrupt,
    summary_table,
    user_errors,
)

if TYPE_CHECKING:
    from s4v_orchestration.overrides import Shortcut

app = typer.Typer(
    help="Evaluate a checkpoint: multi-view test, accuracy report and MLflow record.",
    no_args_is_help=True,
)


@app.command()
def recognition(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="An s4v checkpoint (best.pt / last.pt of a run, or a converted release).",
            exists=True,
            dir_okay=False,
        ),
    ],
    dataset: Annotated[
        str | None,
        typer.Option(
            help="Dataset preset to test on (synthetic, ssv1, ssv2, k400); required for a "
            "converted release, default: the one the run trained on."
        ),
    ] = None,
    views: Annotated[
        str | None,
        typer.Option(
            help="Test views CROPSxCLIPS: 1 or 3 spatial crops x temporal clips, e.g. 3x2 "
            "(default: the run's eval settings)."
        ),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding the prepared dataset (default: the run's).")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Videos per forward pass (eval.batch_size).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: next to the checkpoint, eval-CROPSxCLIPS)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field of the stored config (repeatable)."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)."),
    ] = None,
    tracking: Annotated[
        bool, typer.Option("--tracking/--no-tracking", help="Record the evaluation in MLflow.")
    ] = True,
    verbose: Annotated[bool, typer.Option(help="Log s4v's info messages.")] = False,
) -> None:
    """Top-1, top-5 and mean-class accuracy of a checkpoint, per-class CSV and confusion matrix."""
    # Imported here so that `s4v --help` stays fast (no torch / MLflow import).
    from s4v_orchestration.config import parse_views
    from s4v_orchestration.evaluate import evaluate_checkpoint
    from s4v_orchestration.tracking import ui_command

    configure_logging(verbose)
    shortcuts: list[Shortcut] = [
        (path, value, option)
        for path, value, option in [
            ("data.root", data_root, "--data-root"),
            ("eval.batch_size", batch_size, "--batch-size"),
            ("device", device, "--device"),
        ]
        if value is not None
    ]
    # The stored config holds the training run's store; evaluate into today's default unless told.
    shortcuts.append(("tracking.uri", tracking_uri, "--tracking-uri"))
    shortcuts.append(("tracking.enabled", tracking, "--tracking"))
    with user_errors(), sigterm_as_interrupt():
        if views is not None:
            crops, clips = parse_views(views)
            shortcuts += [
                ("eval.test_crops", crops, "--views"),
                ("eval.test_clips", clips, "--views"),
            ]
        result = evaluate_checkpoint(
            checkpoint,
            dataset=dataset,
            out_dir=output_dir,
            overrides=overrides or [],
            shortcuts=shortcuts,
            progress=True,
        )
    metrics = result.evaluation.metrics
    cfg = result.config
    rows = [
        ("checkpoint", str(checkpoint)),
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        ("views", f"{cfg.eval.test_crops} crops x {cfg.eval.test_clips} clips"),
    ]
    for key, label in [
        ("top1", "top-1"),
        ("top5", "top-5"),
        ("mean_class", "mean-class"),
        ("pair_acc", "direction pairs"),
    ]:
        if (value := percent(metrics, key)) is not None:
            rows.append((label, value))
    rows.append(("report", str(result.out_dir)))
    if result.run_id is not None:
        rows.append(("MLflow run", result.run_id))
    console.print(summary_table("evaluation", rows))
    if result.run_id is not None:
        console.print(f"open the MLflow UI: {ui_command(cfg.tracking.uri)}", soft_wrap=True)


@app.command()
def retrieval(
    checkpoint: Annotated[
        Path,
        typer.Option(
            help="An s4v retrieval checkpoint (best.pt / last.pt of `s4v run retrieval`).",
            exists=True,
            dir_okay=False,
        ),
    ],
    data_root: Annotated[
        Path | None,
        typer.Option(help="Folder holding the annotation files (default: the run's)."),
    ] = None,
    media_root: Annotated[
        Path | None,
        typer.Option(help="Folder holding the frame folders or videos (default: the run's)."),
    ] = None,
    dual_softmax: Annotated[
        bool,
        typer.Option(
            "--dual-softmax",
            help="Also report metrics after dual-softmax re-ranking, under dsl/ (never mixed "
            "into the plain numbers).",
        ),
    ] = False,
    batch_size: Annotated[
        int | None, typer.Option(help="Videos per forward pass (eval.batch_size).")
    ] = None,
    device: Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: next to the checkpoint, eval-<name>)."),
    ] = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a field of the stored config (repeatable)."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)."),
    ] = None,
    tracking: Annotated[
        bool, typer.Option("--tracking/--no-tracking", help="Record the evaluation in MLflow.")
    ] = True,
    verbose: Annotated[bool, typer.Option(help="Log s4v's info messages.")] = False,
) -> None:
    """R@1/5/10, median and mean rank of a checkpoint, both ways, with per-query rank CSVs."""
    from s4v_orchestration.checkpoint import CheckpointError, load_checkpoint
    from s4v_orchestration.commands.run import retrieval_rows
    from s4v_orchestration.evaluate import evaluate_checkpoint
    from s4v_orchestration.tracking import ui_command

    configure_logging(verbose)
    shortcuts: list[Shortcut] = [
        (path, value, option)
        for path, value, option in [
            ("data.root", data_root, "--data-root"),
            ("retrieval.media_root", media_root, "--media-root"),
            ("eval.batch_size", batch_size, "--batch-size"),
            ("device", device, "--device"),
        ]
        if value is not None
    ]
    if dual_softmax:
        shortcuts.append(("retrieval.dual_softmax", True, "--dual-softmax"))
    shortcuts.append(("tracking.uri", tracking_uri, "--tracking-uri"))
    shortcuts.append(("tracking.enabled", tracking, "--tracking"))
    with user_errors(), sigterm_as_interrupt():
        task = load_checkpoint(checkpoint).get("task")
        if task != "retrieval":
            raise CheckpointError(
                f"{checkpoint} is a {task} checkpoint; evaluate it with `s4v eval {task}`"
            )
        result = evaluate_checkpoint(
            checkpoint,
            out_dir=output_dir or checkpoint.parent / f"eval-{checkpoint.stem}",
            overrides=overrides or [],
            shortcuts=shortcuts,
            progress=True,
        )
    metrics = result.evaluation.metrics
    cfg = result.config
    rows = [
        ("checkpoint", str(checkpoint)),
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        ("model", f"{cfg.model.preset} / {cfg.model.method}"),
        *retrieval_rows(metrics, prefix=""),
    ]
    dsl = retrieval_rows(metrics, prefix="dsl/")
    rows += [(f"dual-softmax {name}", value) for name, value in dsl]
    rows.append(("report", str(result.out_dir)))
    if result.run_id is not None:
        rows.append(("MLflow run", result.run_id))
    console.print(summary_table("evaluation", rows))
    if result.run_id is not None:
        console.print(f"open the MLflow UI: {ui_command(cfg.tracking.uri)}", soft_wrap=True)
