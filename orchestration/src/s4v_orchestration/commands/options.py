"""The options that mean the same in several ``s4v run <task>`` / ``s4v eval <task>`` commands.

Typer reads a command's options off its signature, so each task command still lists every
parameter; an option shared by the tasks is one of the ``Annotated`` aliases below, declared (and
its help written) once. A command then hands the shared values on in one piece: :func:`pick`
gathers them from its arguments into the command group's dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")


def dataset_names(task: str) -> str:
    """The task's dataset names for help texts, from the one registry that defines them."""
    from s4v_data.specs import TASK_DATASETS  # light: no torch

    names = list(TASK_DATASETS[task])
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else names[0]


def dataset_help(task: str) -> str:
    """Help text of ``--dataset``: the registered names and the dataset file."""
    return (
        f"Dataset preset with its reference recipe ({dataset_names(task)}), or a dataset file "
        "path/to/dataset.yaml describing your own data (`s4v data prepare` writes one)."
    )


# All task commands.
VerboseOption = Annotated[bool, typer.Option(help="Log s4v's info messages.")]

# `s4v run <task>`.
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
    bool,
    typer.Option(
        "--resume",
        help="Continue from <output-dir>/last.pt after an interruption; without --output-dir, "
        "from the newest runs/<task>-<dataset>-<preset>-<method>-<timestamp> folder with one.",
    ),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Start afresh in an --output-dir that already holds checkpoints, replacing them "
        "(refused otherwise).",
    ),
]
ResumeFromOption = Annotated[
    Path | None, typer.Option(help="Continue from this checkpoint instead.")
]
SeedOption = Annotated[
    int | None,
    typer.Option(help="Random seed of initialisation, sampling and augmentation (seed)."),
]

# `s4v eval <task>`.
EvalBatchSizeOption = Annotated[
    int | None, typer.Option(help="Videos per forward pass (eval.batch_size).")
]
EvalDeviceOption = Annotated[str | None, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
EvalOverridesOption = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        "--cfg-options",
        help="Override a field of the stored config (repeatable; --cfg-options is "
        "MMAction2's name for it).",
    ),
]
EvalTrackingUriOption = Annotated[
    str | None,
    typer.Option(help="MLflow store (default: $MLFLOW_TRACKING_URI or ./mlflow.db)."),
]
EvalTrackingOption = Annotated[
    bool, typer.Option("--tracking/--no-tracking", help="Record the evaluation in MLflow.")
]


def pick(cls: type[T], arguments: Mapping[str, Any]) -> T:
    """The dataclass ``cls`` filled from a command's arguments (``locals()``) by field name."""
    return cls(**{field.name: arguments[field.name] for field in fields(cls)})
