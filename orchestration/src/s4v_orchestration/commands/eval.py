"""``s4v eval <task>``: test a checkpoint with multi-view evaluation and write a report."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s4v_orchestration.commands.common import (
    configure_logging,
    given,
    print_summary,
    recognition_rows,
    retrieval_rows,
    sigterm_as_interrupt,
    user_errors,
    view_shortcuts,
)
from s4v_orchestration.commands.options import (
    EvalBatchSizeOption,
    EvalDeviceOption,
    EvalOverridesOption,
    EvalTrackingOption,
    EvalTrackingUriOption,
    VerboseOption,
    dataset_names,
    pick,
)

if TYPE_CHECKING:
    from s4v_orchestration.evaluate import EvaluationResult
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
            help=f"Dataset preset to test on ({dataset_names('recognition')}) or a dataset file "
            "path/to/dataset.yaml; required for a converted release, default: the one the run "
            "trained on."
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
    batch_size: EvalBatchSizeOption = None,
    device: EvalDeviceOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: next to the checkpoint, eval-CROPSxCLIPS)."),
    ] = None,
    overrides: EvalOverridesOption = None,
    tracking_uri: EvalTrackingUriOption = None,
    tracking: EvalTrackingOption = True,
    verbose: VerboseOption = False,
) -> None:
    """Top-1, top-5 and mean-class accuracy of a checkpoint, per-class CSV and confusion matrix."""
    _eval_task(locals(), _recognition_rows, views=views, dataset=dataset)


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
    dataset: Annotated[
        str | None,
        typer.Option(
            help="A retrieval dataset file path/to/dataset.yaml to test on (default: the data "
            "the run trained on)."
        ),
    ] = None,
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
    batch_size: EvalBatchSizeOption = None,
    device: EvalDeviceOption = None,
    output_dir: Annotated[
        Path | None,
        typer.Option(help="Report folder (default: next to the checkpoint, eval-<name>)."),
    ] = None,
    overrides: EvalOverridesOption = None,
    tracking_uri: EvalTrackingUriOption = None,
    tracking: EvalTrackingOption = True,
    verbose: VerboseOption = False,
) -> None:
    """R@1/5/10, median and mean rank of a checkpoint, both ways, with per-query rank CSVs."""
    extra = given([("retrieval.media_root", media_root, "--media-root")])
    if dual_softmax:
        extra.append(("retrieval.dual_softmax", True, "--dual-softmax"))
    _eval_task(
        locals(),
        _retrieval_rows,
        extra=extra,
        dataset=dataset,
        require_task="retrieval",
        default_out_dir=checkpoint.parent / f"eval-{checkpoint.stem}",
    )


@dataclass(frozen=True)
class EvalOptions:
    """The values of the options that every ``s4v eval <task>`` command has."""

    checkpoint: Path
    data_root: Path | None
    batch_size: int | None
    device: str | None
    output_dir: Path | None
    overrides: list[str] | None
    tracking_uri: str | None
    tracking: bool
    verbose: bool

    def shortcuts(self) -> list[Shortcut]:
        """The options as (config path, value, option) shortcuts on the checkpoint's config."""
        shortcuts = given(
            [
                ("data.root", self.data_root, "--data-root"),
                ("eval.batch_size", self.batch_size, "--batch-size"),
                ("device", self.device, "--device"),
            ]
        )
        # The stored config holds the training run's store: evaluate into today's default
        # unless told.
        shortcuts.append(("tracking.uri", self.tracking_uri, "--tracking-uri"))
        shortcuts.append(("tracking.enabled", self.tracking, "--tracking"))
        return shortcuts


def _eval_task(
    arguments: Mapping[str, Any],
    task_rows: Callable[[EvaluationResult], list[tuple[str, str]]],
    *,
    extra: Sequence[Shortcut] = (),
    views: str | None = None,
    dataset: str | None = None,
    require_task: str | None = None,
    default_out_dir: Path | None = None,
) -> None:
    """Evaluate the checkpoint with the task's ``extra`` shortcuts and ``--views``; print a summary.

    ``arguments`` are the command's (its ``locals()``), from which the shared options are picked;
    ``require_task``: refuse a checkpoint of another task; ``task_rows`` gives the task's lines of
    the summary below the checkpoint and the dataset.
    """
    # Imported here so that `s4v --help` stays fast (no torch / MLflow import).
    from s4v_core.checkpoint import CheckpointError, load_checkpoint
    from s4v_orchestration.evaluate import evaluate_checkpoint

    options = pick(EvalOptions, arguments)
    configure_logging(options.verbose)
    checkpoint = options.checkpoint
    shortcuts = [*options.shortcuts(), *extra]
    with user_errors(), sigterm_as_interrupt():
        shortcuts += view_shortcuts(views)
        if require_task is not None:
            task = load_checkpoint(checkpoint).get("task")
            if task != require_task:
                raise CheckpointError(
                    f"{checkpoint}: a {task} checkpoint; evaluate it with `s4v eval {task}`"
                )
        result = evaluate_checkpoint(
            checkpoint,
            dataset=dataset,
            out_dir=options.output_dir or default_out_dir,
            overrides=options.overrides or [],
            shortcuts=shortcuts,
            progress=True,
        )
    cfg = result.config
    rows = [
        ("checkpoint", str(checkpoint)),
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        *task_rows(result),
        ("report", str(result.out_dir)),
    ]
    if result.run_id is not None:
        rows.append(("MLflow run", result.run_id))
    print_summary("evaluation", rows, result.run_id, cfg.tracking.uri)


def _recognition_rows(result: EvaluationResult) -> list[tuple[str, str]]:
    cfg = result.config
    return [
        ("views", f"{cfg.eval.test_crops} crops x {cfg.eval.test_clips} clips"),
        *recognition_rows(result.evaluation.metrics, prefix=""),
    ]


def _retrieval_rows(result: EvaluationResult) -> list[tuple[str, str]]:
    metrics, cfg = result.evaluation.metrics, result.config
    dsl = retrieval_rows(metrics, prefix="dsl/")
    return [
        ("model", f"{cfg.model.preset} / {cfg.model.method}"),
        *retrieval_rows(metrics, prefix=""),
        *[(f"dual-softmax {name}", value) for name, value in dsl],
    ]
