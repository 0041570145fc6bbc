"""The sweep file: what to search, how to schedule trials and what each trial needs.

A sweep file is YAML validated by pydantic with ``extra="forbid"``, so a misspelt key fails with its
path and line. Example (``examples/sweeps/synthetic-lr.yaml``)::

    task: recognition
    dataset: synthetic
    set:                       # overrides applied to the dataset preset for every trial
      solver.epochs: 4
    search_space:              # dotted run-config paths -> distributions
      solver.lr: {type: loguniform, low: 1.0e-4, high: 3.0e-1}
      model.side_dim: {type: choice, values: [16, 32]}
    num_samples: 4
    scheduler: {type: asha, grace_period: 1, reduction_factor: 2}
    resources: {cpu: 1, gpu: 0}

Everything except ``task``, ``dataset`` and ``search_space`` has a default.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s4v_data.dataset_file import is_dataset_file

TASKS = ("recognition", "retrieval")

# What a sweep optimises unless the file says otherwise: the validation metric that the run reports
# and the paper tables use (top-1 accuracy for recognition, text-to-video R@1 for retrieval).
DEFAULT_METRICS: dict[str, tuple[str, Literal["max", "min"]]] = {
    "recognition": ("val/top1", "max"),
    "retrieval": ("val/t2v/R1", "max"),
}


class SweepFileError(ValueError):
    """A sweep file that cannot be read or does not validate; the message names file and line."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- distributions over one config path -------------------------------------------------------


class Choice(_Strict):
    """Sample one of ``values`` uniformly at random."""

    type: Literal["choice"]
    values: list[Any] = Field(min_length=1)


class Grid(_Strict):
    """Try every one of ``values`` (each grid point is run ``num_samples`` times)."""

    type: Literal["grid"]
    values: list[Any] = Field(min_length=1)


class Uniform(_Strict):
    """A float drawn uniformly from ``[low, high]``."""

    type: Literal["uniform"]
    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class LogUniform(_Strict):
    """A float whose logarithm is uniform on ``[log low, log high]`` (learning rates, decays)."""

    type: Literal["loguniform"]
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> LogUniform:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


class RandInt(_Strict):
    """An integer drawn uniformly from ``low, low + 1, ..., high - 1`` (``high`` is excluded)."""

    type: Literal["randint"]
    low: int
    high: int

    @model_validator(mode="after")
    def _ordered(self) -> RandInt:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be smaller than high ({self.high})")
        return self


Distribution = Annotated[
    Choice | Grid | Uniform | LogUniform | RandInt, Field(discriminator="type")
]


def candidate_values(dist: Distribution) -> list[Any]:
    """Values that stand for the whole distribution when checking it against the run config."""
    if isinstance(dist, Choice | Grid):
        return list(dist.values)
    if isinstance(dist, RandInt):
        return [dist.low, dist.high - 1]
    return [dist.low, dist.high]


# --- scheduling, search, resources -----------------------------------------------------------


class AshaScheduler(_Strict):
    """Asynchronous successive halving: stops trials whose metric lags at epoch milestones."""

    type: Literal["asha"] = "asha"
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it can stop")
    reduction_factor: float = Field(2.0, gt=1, description="keep the best 1/factor at each rung")
    max_t: int | None = Field(
        None, ge=1, description="epochs of the longest trial (default: the run's solver.epochs)"
    )
    brackets: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _grace_within_max(self) -> AshaScheduler:
        if self.max_t is not None and self.grace_period > self.max_t:
            raise ValueError(f"grace_period ({self.grace_period}) exceeds max_t ({self.max_t})")
        return self


class FifoScheduler(_Strict):
    """Run every trial to the end (no early stopping)."""

    type: Literal["fifo"]


# Population based training is left out: it continues a trial from another trial's weights with
# new hyperparameters, and train() resumes only the exact run that wrote a checkpoint.
Scheduler = Annotated[AshaScheduler | FifoScheduler, Field(discriminator="type")]


class Search(_Strict):
    """How trial configurations are proposed."""

    algorithm: Literal["random", "optuna"] = "random"
    seed: int | None = Field(None, description="makes the sampled configurations reproducible")


class Resources(_Strict):
    """What one trial reserves on a Ray node."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, description="fractions such as 0.5 let two trials share a GPU")

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, gpu: float) -> float:
        if gpu > 1 and not gpu.is_integer():
            raise ValueError(f"a trial can use a fraction of one GPU or whole GPUs, not {gpu}")
        return gpu


# --- the sweep -------------------------------------------------------------------------------


class SweepSpec(_Strict):
    """A whole sweep file."""

    name: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="names the Ray experiment folder and the MLflow parent run (default: file stem)",
    )
    task: Literal["recognition", "retrieval"]
    dataset: str = Field(
        description="dataset preset, e.g. ssv1, k400, synthetic, or a dataset file "
        "path/to/dataset.yaml (relative to the sweep file)"
    )
    config: Path | None = Field(
        None, description="a run-config YAML applied after the preset (relative to the sweep file)"
    )
    set: dict[str, Any] = Field(
        default_factory=dict, description="run-config overrides for every trial, dotted paths"
    )
    search_space: dict[str, Distribution] = Field(min_length=1)
    metric: str | None = Field(None, description="reported metric to optimise (default by task)")
    mode: Literal["max", "min"] | None = None
    num_samples: int = Field(1, ge=1, description="trials to sample (times the grid size)")
    max_concurrent_trials: int | None = Field(None, ge=1)
    scheduler: Scheduler = Field(default_factory=AshaScheduler)
    search: Search = Field(default_factory=Search)
    resources: Resources = Field(default_factory=Resources)
    max_failures: int = Field(
        0, ge=0, description="times Ray retries a trial that raised, from its last checkpoint"
    )
    experiment: str | None = Field(
        None, description="MLflow experiment (default: the run config's tracking.experiment)"
    )

    @field_validator("search_space")
    @classmethod
    def _paths_are_dotted_names(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        for path in space:
            if not all(part.isidentifier() for part in path.split(".")):
                raise ValueError(f"{path!r} is not a dotted config path such as solver.lr")
        return space

    @model_validator(mode="after")
    def _compatible(self) -> SweepSpec:
        grids = [p for p, d in self.search_space.items() if isinstance(d, Grid)]
        if grids and self.search.algorithm == "optuna":
            raise ValueError(
                f"search.algorithm optuna cannot enumerate a grid ({', '.join(grids)}); "
                "use type: choice instead"
            )
        overlap = sorted(set(self.set) & set(self.search_space))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} is both fixed in `set` and searched")
        return self

    @property
    def objective(self) -> tuple[str, Literal["max", "min"]]:
        """The metric to optimise and whether larger is better."""
        default_metric, default_mode = DEFAULT_METRICS[self.task]
        return self.metric or default_metric, self.mode or default_mode

    def grid_size(self) -> int:
        """Number of grid points (1 without a grid); Ray runs ``num_samples`` per point."""
        return math.prod(len(d.values) for d in self.search_space.values() if isinstance(d, Grid))

    def total_trials(self) -> int:
        return self.num_samples * self.grid_size()


# --- reading a file --------------------------------------------------------------------------


def _key_lines(node: yaml.Node, path: tuple[str | int, ...], out: dict) -> None:
    """Record the 1-based line of every mapping key and sequence item under ``node``."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*path, key.value)
            out[child] = key.start_mark.line + 1
            _key_lines(value, child, out)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            out[(*path, index)] = item.start_mark.line + 1
            _key_lines(item, (*path, index), out)


def _line_of(loc: tuple[str | int, ...], lines: dict) -> int | None:
    """Line of the deepest YAML key along a pydantic error location.

    Pydantic inserts entries that are not YAML keys (the union tag, e.g. ``loguniform``); they are
    skipped, so ``search_space.solver.lr.loguniform.low`` finds the line of ``low``.
    """
    found, path = None, ()
    for part in loc:
        if (*path, part) in lines:
            path = (*path, part)
            found = lines[path]
    return found


# Entries pydantic adds to an error location for tagged unions; they are not keys of the file.
_UNION_TAGS = {"choice", "grid", "uniform", "loguniform", "randint", "asha", "fifo"}


def _field_name(loc: tuple[str | int, ...]) -> str:
    """``search_space['solver.lr'].low`` for a location; dotted keys are quoted to stay readable."""
    out = ""
    for part in loc:
        if part in _UNION_TAGS:
            continue
        if isinstance(part, int) or "." in part:
            out += f"[{part!r}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def format_validation_error(error: ValidationError, source: str, lines: dict) -> str:
    """One line per problem: ``file:line: field: message``."""
    out = []
    for item in error.errors():
        loc = tuple(item["loc"])
        line = _line_of(loc, lines)
        where = f"{source}:{line}" if line else source
        out.append(f"{where}: {_field_name(loc)}: {item['msg']}")
    return "\n".join(out)


def parse_sweep(text: str, source: str = "<sweep>") -> SweepSpec:
    """Validate sweep-file text; ``source`` names the file in error messages."""
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SweepFileError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SweepFileError(
            f"{source}: a sweep file is a mapping with task, dataset, search_space"
        )
    lines: dict = {}
    _key_lines(node, (), lines)
    try:
        return SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise SweepFileError(format_validation_error(exc, source, lines)) from exc


def load_sweep_file(path: Path) -> SweepSpec:
    """Read and validate a sweep file; a relative ``config`` or dataset file is resolved against
    its folder."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SweepFileError(f"{path}: cannot read the sweep file: {exc.strerror}") from exc
    spec = parse_sweep(text, str(path))
    updates: dict[str, Any] = {}
    if spec.name is None:
        updates["name"] = re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "sweep"
    if spec.config is not None and not spec.config.is_absolute():
        updates["config"] = (path.parent / spec.config).resolve()
    if is_dataset_file(spec.dataset) and not Path(spec.dataset).expanduser().is_absolute():
        updates["dataset"] = str((path.parent / spec.dataset).resolve())
    return spec.model_copy(update=updates) if updates else spec
