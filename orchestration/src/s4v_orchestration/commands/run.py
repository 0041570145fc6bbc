"""``s4v run <task>``: train (and test) a model from a dataset preset, a YAML file and overrides."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from s4v_orchestration.commands.common import (
    configure_logging,
    err_console,
    given,
    percent,
    print_summary,
    recognition_rows,
    retrieval_rows,
    sigterm_as_interrupt,
    user_errors,
    view_shortcuts,
)
from s4v_orchestration.commands.options import (
    ConfigOption,
    DeviceOption,
    EpochsOption,
    OverwriteOption,
    PretrainedOption,
    ResumeFromOption,
    ResumeOption,
    SeedOption,
    TrackingOption,
    VerboseOption,
    dataset_help,
    pick,
)

if TYPE_CHECKING:
    from s4v_orchestration.config import RunConfig
    from s4v_orchestration.overrides import Shortcut
    from s4v_orchestration.train import TrainResult

app = typer.Typer(
    help="Train a model end to end: data, training, validation, test and MLflow tracking.",
    no_args_is_help=True,
)


@app.command()
def recognition(
    dataset: Annotated[
        str | None,
        typer.Option(
            help=f"{dataset_help('recognition')} synthetic is generated on first use and "
            "trains on the CPU in minutes."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "--cfg-options",
            help="Override one field, e.g. --set solver.lr=3e-4 or --set model.method=st-adapter "
            "(repeatable; applied last; --cfg-options is MMAction2's name for it).",
        ),
    ] = None,
    data_root: Annotated[
        Path | None, typer.Option(help="Folder holding the prepared dataset (data.root).")
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(
            help="Model preset (frozen CLIP backbone + side network), e.g. tiny or "
            "side4video-b16; `s4v models` lists them all (model.preset)."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="How the frozen backbone is adapted: side4video (default), or a method to "
            "compare with such as st-adapter; `s4v models` lists them (model.method)."
        ),
    ] = None,
    seed: SeedOption = None,
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
            help="Checkpoints and reports (default "
            "runs/<task>-<dataset>-<preset>-<method>-<timestamp>); one that holds checkpoints "
            "needs --resume or --overwrite."
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
    overwrite: OverwriteOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train and test an action-recognition model: `s4v run recognition --dataset synthetic`."""
    _run_task("recognition", locals(), _recognition_rows, views=views)


@app.command()
def retrieval(
    dataset: Annotated[
        str | None,
        typer.Option(
            help=f"{dataset_help('retrieval')} synthetic (captioned) is generated on first "
            "use and trains on the CPU in minutes."
        ),
    ] = None,
    config: ConfigOption = None,
    overrides: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            "--cfg-options",
            help="Override one field, e.g. --set retrieval.similarity=meanP or "
            "--set retrieval.train_text=true (repeatable; applied last; --cfg-options is "
            "MMAction2's name for it).",
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
            help="Model preset (frozen CLIP + side network), e.g. tiny or side4video-b16; "
            "`s4v models` lists them all (model.preset)."
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="side4video, or frozen-clip for the same model with the side network off "
            "(plain CLIP frame embeddings) (model.method)."
        ),
    ] = None,
    seed: SeedOption = None,
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
            help="Checkpoints and reports (default "
            "runs/retrieval-<dataset>-<preset>-<method>-<timestamp>); one that holds "
            "checkpoints needs --resume or --overwrite."
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
    overwrite: OverwriteOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Train and test a text-video retrieval model: `s4v run retrieval --dataset synthetic`."""
    extra = given([("retrieval.media_root", media_root, "--media-root")])
    _run_task("retrieval", locals(), _retrieval_rows, extra=extra)


@dataclass(frozen=True)
class RunOptions:
    """The values of the options that every ``s4v run <task>`` command has."""

    dataset: str | None
    config: Path | None
    overrides: list[str] | None
    data_root: Path | None
    backbone: str | None
    method: str | None
    seed: int | None
    pretrained: str | None
    epochs: int | None
    batch_size: int | None
    device: str | None
    output_dir: Path | None
    tracking_uri: str | None
    tracking: bool
    resume: bool
    resume_from: Path | None
    overwrite: bool
    verbose: bool

    def shortcuts(self) -> list[Shortcut]:
        """The shortcut options the user actually passed, as (config path, value, option) triples."""
        shortcuts = given(
            [
                ("data.root", self.data_root, "--data-root"),
                ("model.preset", self.backbone, "--backbone"),
                ("model.method", self.method, "--method"),
                ("seed", self.seed, "--seed"),
                ("solver.epochs", self.epochs, "--epochs"),
                ("data.batch_size", self.batch_size, "--batch-size"),
                ("device", self.device, "--device"),
                ("output_dir", self.output_dir, "--output-dir"),
                ("tracking.uri", self.tracking_uri, "--tracking-uri"),
            ]
        )
        if self.pretrained is not None:
            shortcuts.append(("model.pretrained", _none_word(self.pretrained), "--pretrained"))
        if not self.tracking:
            shortcuts.append(("tracking.enabled", False, "--no-tracking"))
        return shortcuts


def _run_task(
    task: str,
    arguments: Mapping[str, Any],
    task_rows: Callable[[TrainResult], list[tuple[str, str]]],
    *,
    extra: Sequence[Shortcut] = (),
    views: str | None = None,
) -> None:
    """Train ``task`` with the task's ``extra`` shortcuts and ``--views``, then print a summary.

    ``arguments`` are the command's (its ``locals()``), from which the shared options are picked;
    ``task_rows`` gives the task's lines of the summary below the dataset and the model.
    """
    options = pick(RunOptions, arguments)
    configure_logging(options.verbose)
    started = time.perf_counter()
    shortcuts = [*options.shortcuts(), *extra, *view_shortcuts(views)]
    result = _train(task, options, shortcuts)
    if not result.is_main:
        return  # under torchrun every rank returns here; rank 0 reports the run
    cfg = result.config
    rows = [
        ("dataset", f"{cfg.data.dataset} ({cfg.data.root})"),
        ("model", f"{cfg.model.preset} / {cfg.model.method}"),
        *task_rows(result),
        ("wall time", f"{time.perf_counter() - started:.0f} s"),
        ("checkpoints", str(cfg.output_dir)),
    ]
    if result.run_id is not None:
        rows.append(("MLflow run", f"{result.run_id} (experiment {cfg.tracking.experiment})"))
    print_summary("run summary", rows, result.run_id, cfg.tracking.uri)


def _recognition_rows(result: TrainResult) -> list[tuple[str, str]]:
    metrics, cfg = result.metrics, result.config
    views = f" ({cfg.eval.test_crops}x{cfg.eval.test_clips})"
    return [
        (
            "best val top-1",
            f"{percent(metrics, 'val/best_top1')} (epoch {int(metrics['best_epoch'])})",
        ),
        *recognition_rows(metrics, prefix="test/", label="test ", views=views),
    ]


def _retrieval_rows(result: TrainResult) -> list[tuple[str, str]]:
    metrics = result.metrics
    return [
        (
            "best val t2v R@1",
            f"{percent(metrics, 'val/best_t2v/R1')} (epoch {int(metrics['best_epoch'])})",
        ),
        *retrieval_rows(metrics, prefix="test/"),
    ]


def _train(task: str, options: RunOptions, shortcuts: list[Shortcut]) -> TrainResult:
    """Build the config (preset, YAML, shortcuts, ``--set``) and run the training to the end."""
    from s4v_orchestration.overrides import load_run_config
    from s4v_orchestration.train import run_training

    resume_hint = "; free some space and run again (with --resume to continue from last.pt)"
    with user_errors(after_no_room=resume_hint), sigterm_as_interrupt():
        run_config = _with_output_dir(
            load_run_config(
                task,
                options.dataset,
                options.config,
                overrides=options.overrides or [],
                shortcuts=shortcuts,
            ),
            options,
        )
        try:
            return run_training(run_config, progress=True)
        except KeyboardInterrupt:
            err_console.print(
                "[bold yellow]interrupted.[/bold yellow] Continue with the same command plus "
                f"--resume (checkpoint: {Path(run_config.output_dir) / 'last.pt'})."
            )
            raise typer.Exit(130) from None


def _with_output_dir(config: RunConfig, options: RunOptions) -> RunConfig:
    """The config with its defaults, output folder and checkpoint to resume from, checked before
    anything runs (so that a folder that cannot be used leaves no MLflow run behind).

    ``--resume`` without an output folder continues the newest default folder of the same task,
    dataset, preset and method. A folder that already holds checkpoints is refused unless the
    run resumes or ``--overwrite`` is given.
    """
    from s4v_orchestration.config import ConfigError, latest_output_dir

    resuming = options.resume or options.resume_from is not None
    if options.resume and options.resume_from is None and config.output_dir is None:
        latest = latest_output_dir(config)
        if latest is None:
            raise ConfigError(
                "--resume: no earlier run of this task, dataset, preset and method under "
                f"{Path('runs').resolve()} holds a last.pt; pass --output-dir (or --resume-from)"
            )
        config = config.model_copy(update={"output_dir": latest})
    config = config.with_defaults()
    pretrained = config.model.pretrained
    # A path (not an open_clip tag such as openai) must name an existing file.
    is_path = pretrained is not None and ("/" in pretrained or "\\" in pretrained)
    if is_path and not Path(pretrained).is_file():
        raise ConfigError(f"model.pretrained: no weights file {pretrained!r}")
    out_dir = Path(config.output_dir)
    held = [name for name in ("last.pt", "best.pt") if (out_dir / name).is_file()]
    if held and not resuming and not options.overwrite:
        raise ConfigError(
            f"output_dir: {out_dir} already holds the checkpoints of a run ({', '.join(held)}); "
            "continue it with --resume, replace them with --overwrite, or choose another "
            "--output-dir"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output_dir: cannot create {out_dir}: {err.strerror}") from None
    if resuming:
        resume = options.resume_from or out_dir / "last.pt"
        config = config.model_copy(update={"resume": resume})
    return config


def _none_word(value: str | None) -> str | None:
    """``--pretrained none`` means random weights."""
    if value is None or value.lower() in {"none", "null", "random"}:
        return None
    return value
