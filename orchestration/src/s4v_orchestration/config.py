"""The run-configuration schema: validated pydantic models, one per section of a run.

A run is described by one :class:`RunConfig`. It is built in three layers, each overriding the one
before: the dataset recipe (:mod:`s4v_orchestration.recipes`), an optional YAML file, then CLI
shortcuts and ``--set path.to.field=value`` overrides (:mod:`s4v_orchestration.overrides`). Every
section forbids unknown fields, so a typo fails before anything runs and the error names the field
path (and, for a YAML file, the line).
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

import s4v_recognition
import s4v_retrieval
from s4v_data.specs import TASK_DATASETS
from s4v_data.workers import available_workers
from s4v_orchestration.paths import default_cache_dir, default_data_root, default_tracking_uri

Task = Literal["recognition", "retrieval"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the field path and its source."""


class _Section(BaseModel):
    # allow_inf_nan=False: a number such as solver.lr=.inf is refused like .nan.
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )


class SyntheticConfig(_Section):
    """How the synthetic dataset is generated (used only with ``data.dataset=synthetic``)."""

    videos_per_class: PositiveInt = 60  # 20 % of them form the validation split
    num_frames: PositiveInt = 16  # frames per video; clips sample data.num_frames of them
    size: PositiveInt = 40  # frame height and width in pixels
    seed: int = 0


class DataConfig(_Section):
    """Which dataset, where it lives, and how clips are sampled and batched."""

    dataset: str  # a registered dataset, or the name of the dataset file's dataset
    # The dataset.yaml a user's own dataset comes from (set by --dataset path/to/dataset.yaml,
    # with the lists, labels, root and source below); None for a registered dataset.
    dataset_file: Path | None = None
    # The registered dataset whose sampling and resizing a dataset file's data follows (its
    # recipe: k400 for appearance, ssv2 for motion), so a checkpoint preprocesses without it.
    recipe_base: str | None = None
    root: Path | None = None  # None: $S4V_DATA_ROOT/<dataset>; synthetic: the s4v cache folder
    train_list: str | None = None  # relative to root; None: the dataset's default list
    val_list: str | None = None
    test_list: str | None = None  # the final test's list; None: the validation list
    labels: str | None = None  # class-name CSV (id,name); None: the dataset's default
    split: PositiveInt = 1  # the official split of UCF101 / HMDB51 (1, 2 or 3)
    source: Literal["rawframes", "video"] = "rawframes"
    num_frames: PositiveInt = 8  # T: frames sampled per clip
    input_size: PositiveInt | None = None  # None: the backbone's image size
    batch_size: PositiveInt = 16  # videos per process and step (before repeated augmentation)
    num_sample: PositiveInt = 1  # repeated augmentation: augmented clips per loaded video
    rand_augment: bool = False
    # Horizontal flip in training: None keeps the dataset's rule (label-swapping for
    # Something-Something and synthetic, plain for Kinetics); "none" turns it off.
    flip: Literal["swap-labels", "plain", "none"] | None = None
    # Loader worker processes per training process; "auto": the cores this process may use,
    # shared by the node's torchrun processes, one kept for the process (s4v_data.available_workers).
    num_workers: NonNegativeInt | Literal["auto"] = "auto"
    prefetch_factor: PositiveInt | None = None  # batches each worker loads ahead (None: torch's 2)
    # Keep the validation and test loaders' workers (and decoders) alive between evaluations.
    persistent_workers: bool = True
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)

    def workers(self) -> int:
        """``num_workers`` resolved: ``auto`` becomes this machine's share for this process."""
        if self.num_workers != "auto":
            return self.num_workers
        return available_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


# Model presets and methods of each task (checked against ``task`` by RunConfig).
MODEL_REGISTRIES: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "recognition": (s4v_recognition.PRESETS, s4v_recognition.METHODS),
    "retrieval": (s4v_retrieval.PRESETS, s4v_retrieval.METHODS),
}


class ModelConfig(_Section):
    """Which network to build (``s4v_recognition.build_model`` / ``s4v_retrieval.build_model``)."""

    preset: str = "tiny"  # backbone + side network size, a key of the task's PRESETS
    method: str = "side4video"  # a METHODS entry of the task (retrieval adds frozen-clip)
    pretrained: str | None = None  # open_clip tag (e.g. openai), a local weights file, or None
    side_dim: PositiveInt | None = None  # None: the preset's side width
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)  # recognition only
    grad_checkpointing: bool = False  # recompute side blocks in backward to save memory
    # Backbone layers (0-based) followed by a side block: increasing layer indices, "odd" (the
    # reference's EVA placement), "all" (its CLIP placement) or None for the preset's choice.
    side_layers: list[NonNegativeInt] | Literal["all", "odd"] | None = None

    @field_validator("side_layers")
    @classmethod
    def _increasing_layers(cls, value: list[int] | str | None) -> list[int] | str | None:
        if isinstance(value, list) and (not value or sorted(set(value)) != value):
            raise ValueError(f"side_layers must be increasing and non-empty, got {value}")
        return value

    # The task comes from the validation context (apply_overrides passes it); without one, a name
    # of any task is accepted here and the model builder rejects a mismatch.
    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str, info: ValidationInfo) -> str:
        task, registries = _registries(info)
        known = sorted({name for presets, _ in registries for name in presets})
        if value not in known:
            raise ValueError(f"unknown {task}model preset {value!r}; choose one of {known}")
        return value

    @field_validator("method")
    @classmethod
    def _known_method(cls, value: str, info: ValidationInfo) -> str:
        task, registries = _registries(info)
        known = list(dict.fromkeys(name for _, methods in registries for name in methods))
        if value not in known:
            raise ValueError(f"unknown {task}method {value!r}; choose one of {known}")
        return value


def _registries(info: ValidationInfo) -> tuple[str, list[tuple[dict[str, Any], tuple[str, ...]]]]:
    """(``"<task> "`` or ``""``, the preset and method registries a model may come from)."""
    task = (info.context or {}).get("task")
    if task in MODEL_REGISTRIES:
        return f"{task} ", [MODEL_REGISTRIES[task]]
    return "", list(MODEL_REGISTRIES.values())


class RetrievalConfig(_Section):
    """Text-video retrieval settings (used only with ``task=retrieval``)."""

    similarity: Literal["wti", "meanP"] | None = None  # None: the model preset's (wti)
    max_words: PositiveInt | None = None  # tokens per caption; None: the preset's (32)
    train_text: bool = False  # train the CLIP text tower (frozen by default)
    text_lr_scale: PositiveFloat = 1e-3  # text tower lr = solver.lr x this (reference: 1e-3)
    # every-caption: each (video, caption) pair is a sample (reference); random-caption: one
    # sample per video with a random caption, so a batch never holds the same video twice.
    captions: Literal["every-caption", "random-caption"] = "every-caption"
    media_root: Path | None = None  # frame folders / videos; None: data.root
    dual_softmax: bool = False  # also report dsl/... metrics (dual-softmax re-ranking)
    eval_text_chunk: PositiveInt = 256  # captions scored per block when ranking
    eval_video_chunk: PositiveInt = 512  # videos per block inside a caption block


class SolverConfig(_Section):
    """Optimiser, schedule, loss and numerics (the reference's ``Recognition/train_vision.py``)."""

    epochs: PositiveInt = 30
    warmup_epochs: NonNegativeFloat = 4.0  # linear warm-up from 0, then cosine to 0 at `epochs`
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.15
    betas: tuple[float, float] = (0.9, 0.999)
    eps: PositiveFloat = 1e-8
    label_smoothing: float = Field(default=0.1, ge=0.0, lt=1.0)
    mixup_alpha: NonNegativeFloat = 0.0  # 0 disables mixup
    cutmix_alpha: NonNegativeFloat = 0.0  # 0 disables cutmix
    mix_switch_prob: float = Field(default=0.5, ge=0.0, le=1.0)  # P(cutmix) when both are on
    grad_accumulation: PositiveInt = 1  # optimizer step every N batches
    clip_grad_norm: PositiveFloat | None = None  # None: no clipping
    precision: Precision = "auto"  # auto: bf16 (or fp16 + scaler) on CUDA, fp32 on CPU
    max_steps: PositiveInt | None = None  # stop after this many optimizer steps (smoke runs)


class EvalConfig(_Section):
    """Validation during training and the multi-view test at the end."""

    every: PositiveInt = 1  # validate every N epochs (the last epoch always validates)
    batch_size: PositiveInt | None = None  # None: data.batch_size
    test_crops: Literal[1, 3] = 1  # spatial crops per video in the multi-view test
    test_clips: PositiveInt = 1  # temporal clips per video in the multi-view test
    final_test: bool = True  # test the best checkpoint with crops x clips views at the end
    # Share of the validation or test videos that may be undecodable: they are left out of the
    # metrics and counted (val/unreadable, test/unreadable); beyond it the evaluation fails.
    max_unreadable: float = Field(default=0.05, ge=0.0, le=1.0)


class TrackingConfig(_Section):
    """Where and how the run is recorded in MLflow."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI or sqlite:///./mlflow.db
    experiment: str | None = None  # None: "<task>-<dataset>"
    run_name: str | None = None  # None: built from preset, dataset and key hyperparameters
    parent_run_id: str | None = None  # log as a nested child of this (running) run, for sweeps
    system_metrics: bool = True  # CPU/GPU/memory utilisation sampled in the background
    log_every: PositiveInt = 10  # optimizer steps between step metrics
    log_checkpoint: bool = True  # upload best.pt as a run artifact
    log_model: bool = True  # log the best model as an MLflow pyfunc model ("Logged models")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class RunConfig(_Section):
    """Everything one training run needs; ``train(config)`` consumes it."""

    task: Task = "recognition"
    seed: int = 1024  # each process uses seed + rank
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # torch CPU threads per process; None keeps torch's default (one per core). Tiny models run
    # faster on one thread, which also leaves a core to the data-loading worker.
    cpu_threads: PositiveInt | None = None
    output_dir: Path | None = None  # None: runs/<task>-<dataset>-<preset>-<method>-<timestamp>
    resume: Path | None = None  # checkpoint to continue from (e.g. <output_dir>/last.pt)
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    solver: SolverConfig = Field(default_factory=SolverConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"device must be auto, cpu, mps, cuda or cuda:N, got {value!r}")
        return value

    @model_validator(mode="after")
    def _known_dataset(self) -> RunConfig:
        datasets = TASK_DATASETS.get(self.task, {})
        if self.data.dataset_file is None and self.data.dataset not in datasets:
            raise ValueError(
                f"data.dataset {self.data.dataset!r} is not a {self.task} dataset; "
                f"choose one of {sorted(datasets)} or give a dataset file (path/to/dataset.yaml)"
            )
        return self

    def with_defaults(self) -> RunConfig:
        """A copy with every ``None`` default that depends on the environment filled in.

        Idempotent; ``train()`` calls it so that the logged config is the one that ran.
        """
        cfg = self.model_copy(deep=True)
        if cfg.data.root is None:
            if cfg.data.dataset == "synthetic":
                cfg.data.root = default_cache_dir() / _synthetic_folder(
                    cfg.task, cfg.data.synthetic
                )
            else:
                cfg.data.root = default_data_root() / cfg.data.dataset
        if cfg.output_dir is None:
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            cfg.output_dir = Path("runs") / f"{_run_folder_prefix(cfg)}-{stamp}"
        cfg.output_dir = cfg.output_dir.expanduser().resolve()
        cfg.data.root = cfg.data.root.expanduser().resolve()
        if cfg.tracking.uri is None:
            cfg.tracking.uri = default_tracking_uri()
        if cfg.tracking.experiment is None:
            cfg.tracking.experiment = f"{cfg.task}-{cfg.data.dataset}"
        return cfg


def _run_folder_prefix(config: RunConfig) -> str:
    return f"{config.task}-{config.data.dataset}-{config.model.preset}-{config.model.method}"


def latest_output_dir(config: RunConfig) -> Path | None:
    """The newest default output folder of this task, dataset, preset and method that holds a
    ``last.pt`` (``runs/<task>-<dataset>-<preset>-<method>-<YYYYmmdd-HHMMSS>``), or None."""
    prefix = _run_folder_prefix(config)
    pattern = re.compile(rf"{re.escape(prefix)}-\d{{8}}-\d{{6}}(-\d+)?")
    runs = Path("runs").resolve()
    folders = sorted(
        (path for path in runs.glob(f"{prefix}-*") if pattern.fullmatch(path.name)),
        key=lambda path: _stamp_order(path.name[len(prefix) + 1 :]),
    )
    folders = [path for path in folders if (path / "last.pt").is_file()]
    return folders[-1] if folders else None


def _stamp_order(stamp: str) -> tuple[str, int]:
    """``20260101-000000`` before ``20260101-000000-2`` (a second run in the same second)."""
    date, time, *counter = stamp.split("-")
    return f"{date}-{time}", int(counter[0]) if counter else 1


def _synthetic_folder(task: str, synthetic: SyntheticConfig) -> str:
    """The cache folder of a synthetic set: one per variant and parameters, so that a run never
    replaces a set generated with other parameters (retrieval needs the captioned variant)."""
    folder = "synthetic" if task == "recognition" else "synthetic-captioned"
    if synthetic == SyntheticConfig():
        return folder
    return (
        f"{folder}-{synthetic.videos_per_class}v-{synthetic.num_frames}f-{synthetic.size}px"
        f"-seed{synthetic.seed}"
    )


def flatten(config: RunConfig) -> dict[str, str]:
    """The config as ``{"solver.lr": "0.001", ...}`` (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(f"{prefix}.{key}" if prefix else key, sub)
        else:
            out[prefix] = "null" if value is None else str(value)

    walk("", config.model_dump(mode="json"))
    return out


# Fields that change none of a run's numbers: MLflow tags (``s4v.config.<path>``), not parameters,
# so the UI's compare views and parallel-coordinates plots show only what matters.
BOOKKEEPING_FIELDS = ("output_dir", "cpu_threads", "resume", "tracking.")
# Fields only the other task reads, left out of a run's parameters.
TASK_ONLY_FIELDS: dict[str, tuple[str, ...]] = {
    "recognition": (
        "model.dropout",
        "solver.label_smoothing",
        "solver.mixup_alpha",
        "solver.cutmix_alpha",
        "solver.mix_switch_prob",
        "data.flip",
        "data.rand_augment",
        "data.num_sample",
        "data.labels",
        "data.train_list",
        "data.val_list",
    ),
    "retrieval": ("retrieval.",),
}


def run_params(config: RunConfig) -> tuple[dict[str, str], dict[str, str]]:
    """``(params, tags)`` to record: the task's own fields as parameters, bookkeeping as tags.

    Fields of the other task are left out (a recognition run has no ``retrieval.*``); paths and
    settings that change no number (``output_dir``, ``cpu_threads``, ``tracking.*``) become tags
    named ``s4v.config.<path>``.
    """
    foreign = tuple(
        path for task, paths in TASK_ONLY_FIELDS.items() if task != config.task for path in paths
    )
    params, tags = {}, {}
    for path, value in flatten(config).items():
        if path.startswith(foreign):
            continue
        if path.startswith(BOOKKEEPING_FIELDS):
            tags[f"s4v.config.{path}"] = value
        else:
            params[path] = value
    return params, tags


def to_yaml(config: RunConfig) -> str:
    """The config as YAML text that ``--config`` reads back to the same config."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def parse_views(text: str) -> tuple[int, int]:
    """``"3x2"`` -> ``(3, 2)``: spatial crops x temporal clips of the multi-view test."""
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise ConfigError(f"--views {text!r}: expected CROPSxCLIPS, e.g. 1x1, 3x2 or 3x4")
    crops, clips = int(match[1]), int(match[2])
    if crops not in (1, 3) or clips < 1:
        raise ConfigError(f"--views {text!r}: crops must be 1 or 3 and clips at least 1")
    return crops, clips
