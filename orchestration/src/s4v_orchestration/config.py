"""Run configuration: validated pydantic models, dataset presets, YAML files and ``--set`` overrides.

A run is described by one :class:`RunConfig`. It is built in three layers, each overriding the one
before: the dataset preset (the reference recipe, Side4Video spec 2.2), an optional YAML file, then
``--set path.to.field=value`` overrides (the CLI shortcuts such as ``--epochs`` are overrides too).
Every section forbids unknown fields, so a typo fails before anything runs and the error names the
field path (and, for a YAML file, the line).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
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
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

import s4v_recognition
import s4v_retrieval
from s4v_orchestration.paths import default_cache_dir, default_data_root, default_tracking_uri

Task = Literal["recognition", "retrieval"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the field path and its source."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class SyntheticConfig(_Section):
    """How the synthetic dataset is generated (used only with ``data.dataset=synthetic``)."""

    videos_per_class: PositiveInt = 60  # 20 % of them form the validation split
    num_frames: PositiveInt = 16  # frames per video; clips sample data.num_frames of them
    size: PositiveInt = 40  # frame height and width in pixels
    seed: int = 0


class DataConfig(_Section):
    """Which dataset, where it lives, and how clips are sampled and batched."""

    dataset: str
    root: Path | None = None  # None: $S4V_DATA_ROOT/<dataset>; synthetic: the s4v cache folder
    train_list: str | None = None  # relative to root; None: the dataset's default list
    val_list: str | None = None
    labels: str | None = None  # class-name CSV (id,name); None: the dataset's default
    source: Literal["rawframes", "video"] = "rawframes"
    num_frames: PositiveInt = 8  # T: frames sampled per clip
    input_size: PositiveInt | None = None  # None: the backbone's image size
    batch_size: PositiveInt = 16  # videos per process and step (before repeated augmentation)
    num_sample: PositiveInt = 1  # repeated augmentation: augmented clips per loaded video
    rand_augment: bool = False
    # Horizontal flip in training: None keeps the dataset's rule (label-swapping for
    # Something-Something and synthetic, plain for Kinetics); "none" turns it off.
    flip: Literal["swap-labels", "plain", "none"] | None = None
    num_workers: NonNegativeInt = 4
    synthetic: SyntheticConfig = Field(default_factory=SyntheticConfig)


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
    """Optimiser, schedule, loss and numerics (Side4Video spec 2.1)."""

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


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class RunConfig(_Section):
    """Everything one training run needs; ``train(config)`` consumes it."""

    task: Task = "recognition"
    seed: int = 1024  # each process uses seed + rank
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    # torch CPU threads per process; None keeps torch's default (one per core). Tiny models run
    # faster on one thread, which also leaves a core to the data-loading worker.
    cpu_threads: PositiveInt | None = None
    output_dir: Path | None = None  # None: runs/<task>-<dataset>-<preset>-<method>
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
        presets = DATASET_PRESETS.get(self.task, {})
        if self.data.dataset not in presets:
            raise ValueError(
                f"data.dataset {self.data.dataset!r} is not a {self.task} dataset; "
                f"choose one of {sorted(presets)}"
            )
        return self

    def with_defaults(self) -> RunConfig:
        """A copy with every ``None`` default that depends on the environment filled in.

        Idempotent; ``train()`` calls it so that the logged config is the one that ran.
        """
        cfg = self.model_copy(deep=True)
        if cfg.data.root is None:
            if cfg.data.dataset == "synthetic":
                # Retrieval needs the captioned variant; its own folder keeps both cached.
                folder = "synthetic" if cfg.task == "recognition" else "synthetic-captioned"
                cfg.data.root = default_cache_dir() / folder
            else:
                cfg.data.root = default_data_root() / cfg.data.dataset
        if cfg.output_dir is None:
            name = f"{cfg.task}-{cfg.data.dataset}-{cfg.model.preset}-{cfg.model.method}"
            cfg.output_dir = Path("runs") / name
        cfg.output_dir = cfg.output_dir.expanduser().resolve()
        cfg.data.root = cfg.data.root.expanduser().resolve()
        if cfg.tracking.uri is None:
            cfg.tracking.uri = default_tracking_uri()
        if cfg.tracking.experiment is None:
            cfg.tracking.experiment = f"{cfg.task}-{cfg.data.dataset}"
        return cfg


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------------------------
# Dataset presets: the reference recipes (Side4Video spec 2.2) as partial configs.

_SOMETHING_SOMETHING = {
    "data": {"num_frames": 8, "batch_size": 16, "num_sample": 2, "rand_augment": True},
    "model": {"preset": "side4video-b16", "pretrained": "openai"},
    "solver": {
        "warmup_epochs": 4,
        "lr": 1e-3,
        "weight_decay": 0.15,
        "label_smoothing": 0.1,
    },
    "eval": {"test_crops": 3, "test_clips": 2},
}

# Side4Video retrieval scripts (spec 4.3): 5 epochs, lr 1e-4 with 10 % warm-up, BertAdam-like
# betas/eps/weight decay, global gradient clipping at 1.0, 12 frames, 32 words, C = 320; global
# batch 128 (16 per GPU on 8 GPUs: pass --batch-size 16 under torchrun). MSR-VTT and VATEX use
# ViT-B/16, MSVD ViT-B/32. The text tower stays frozen (the reference's 1e-7 updates are below
# its fp16 resolution); retrieval.train_text=true trains it at lr x retrieval.text_lr_scale.
_RETRIEVAL_REFERENCE = {
    "data": {"num_frames": 12, "batch_size": 128},
    "model": {"preset": "side4video-b16", "pretrained": "openai"},
    "solver": {
        "epochs": 5,
        "warmup_epochs": 0.5,
        "lr": 1e-4,
        "weight_decay": 0.2,
        "betas": (0.9, 0.98),
        "eps": 1e-6,
        "clip_grad_norm": 1.0,
    },
    "retrieval": {"max_words": 32, "similarity": "wti"},
}

DATASET_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "recognition": {
        # Self-contained run on CPU: a tiny frozen CLIP and a generated dataset whose classes
        # come in time-reversed pairs. Tuned to reach >= 80 % val top-1 within a few minutes on
        # 2 cores: one compute thread plus one decoding worker.
        "synthetic": {
            "data": {
                "num_frames": 8,
                "batch_size": 16,
                "num_sample": 1,
                "rand_augment": False,
                "num_workers": 1,
            },
            "model": {"preset": "tiny", "pretrained": None},
            "solver": {
                "epochs": 6,
                "warmup_epochs": 1,
                "lr": 3e-3,
                "weight_decay": 0.05,
                "label_smoothing": 0.1,
            },
            "eval": {"test_crops": 1, "test_clips": 1},
            "device": "cpu",
            "cpu_threads": 1,
        },
        "ssv1": _deep_merge(_SOMETHING_SOMETHING, {"solver": {"epochs": 40}}),
        "ssv2": _deep_merge(_SOMETHING_SOMETHING, {"solver": {"epochs": 30}}),
        "k400": {
            "data": {"num_frames": 8, "batch_size": 32, "num_sample": 1, "rand_augment": False},
            "model": {"preset": "side4video-b16", "pretrained": "openai"},
            "solver": {
                "epochs": 30,
                "warmup_epochs": 4,
                "lr": 1e-3,
                "weight_decay": 0.15,
                "label_smoothing": 0.1,
            },
            "eval": {"test_crops": 3, "test_clips": 4},
        },
    },
    "retrieval": {
        # Self-contained run on CPU: the tiny random-weight CLIP and the captioned synthetic set
        # ("a red square moves from left to right"). Random CLIP weights mean the text tower has
        # to learn too, so it trains here at the full learning rate.
        "synthetic": {
            "data": {
                "num_frames": 8,
                "batch_size": 32,
                "num_workers": 0,
                "synthetic": {"videos_per_class": 60, "num_frames": 16, "size": 32},
            },
            "model": {"preset": "tiny", "pretrained": None},
            "solver": {"epochs": 30, "warmup_epochs": 1, "lr": 2e-3, "weight_decay": 0.05},
            "retrieval": {"train_text": True, "text_lr_scale": 1.0, "captions": "random-caption"},
            "device": "cpu",
        },
        "msrvtt": _RETRIEVAL_REFERENCE,
        "msvd": _deep_merge(_RETRIEVAL_REFERENCE, {"model": {"preset": "side4video-b32"}}),
        "vatex": _RETRIEVAL_REFERENCE,
    },
}


def preset_config(task: str, dataset: str) -> dict[str, Any]:
    """The preset for one dataset as a plain nested dict (``data.dataset`` and ``task`` included)."""
    presets = DATASET_PRESETS.get(task)
    if presets is None:
        raise ConfigError(f"unknown task {task!r}; choose one of {sorted(DATASET_PRESETS)}")
    if dataset not in presets:
        raise ConfigError(
            f"unknown {task} dataset {dataset!r}; choose one of {sorted(presets)} "
            "(or --dataset synthetic for a self-contained run)"
        )
    return _deep_merge(presets[dataset], {"task": task, "data": {"dataset": dataset}})


# --------------------------------------------------------------------------------------------
# Layers: YAML file and `--set` overrides.


def parse_override(text: str) -> tuple[tuple[str, ...], Any]:
    """``"solver.lr=3e-4"`` -> ``(("solver", "lr"), 0.0003)``; the value is read as YAML.

    ``none`` / ``None`` / ``null`` mean no value, so ``--set model.pretrained=none`` works.
    """
    key, sep, raw = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise ConfigError(f"--set {text!r}: expected path.to.field=value, e.g. solver.lr=3e-4")
    if raw.strip() in {"none", "None", "null", "~", ""}:
        return path, None
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    return path, value


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any, source: str) -> None:
    node = tree
    for depth, part in enumerate(path[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"{source}: {where} is a value, not a section")
        node = child
    node[path[-1]] = value


def _yaml_line(node: yaml.Node | None, path: Sequence[str | int]) -> int | None:
    """1-based line of the deepest YAML node along ``path`` (for error messages)."""
    line = None
    for part in path:
        if not isinstance(node, yaml.MappingNode):
            break
        match = next((kv for kv in node.value if kv[0].value == str(part)), None)
        if match is None:
            break
        line = match[0].start_mark.line + 1
        node = match[1]
    return line


def read_yaml_config(path: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse a YAML run config into a dict (and its node tree, for line numbers in errors)."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from err
    try:
        tree = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}, None
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of sections (data:, model:, ...)"
        )
    return data, tree


# A typed override from a CLI shortcut: (dotted field path, value, the option that set it).
Shortcut = tuple[str, Any, str]


def load_run_config(
    task: str,
    dataset: str | None,
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    shortcuts: Sequence[Shortcut] = (),
) -> RunConfig:
    """Build a validated run config: dataset preset, YAML file, shortcuts, then ``--set`` overrides.

    Args:
        task: "recognition" (or "retrieval").
        dataset: preset name; None takes ``data.dataset`` from the YAML file.
        config_file: optional YAML file with any subset of the RunConfig fields.
        overrides: ``path.to.field=value`` strings, applied in order (last wins).
        shortcuts: typed values of CLI options such as ``--epochs``, applied before ``overrides``.

    Raises:
        ConfigError: naming the field path (and file line, option or ``--set`` item) of every
            problem.
    """
    file_data, file_tree = read_yaml_config(config_file) if config_file else ({}, None)
    file_dataset = (file_data.get("data") or {}).get("dataset")
    if dataset is None:
        dataset = file_dataset
    if dataset is None:
        raise ConfigError("no dataset chosen: pass --dataset (e.g. --dataset synthetic)")
    if file_dataset is not None and file_dataset != dataset:
        raise ConfigError(
            f"{config_file}: data.dataset is {file_dataset!r} but --dataset is {dataset!r}"
        )
    merged = _deep_merge(preset_config(task, dataset), file_data)
    return apply_overrides(merged, overrides, shortcuts, file=(config_file, file_tree, file_data))


def apply_overrides(
    tree: dict[str, Any],
    overrides: Sequence[str] = (),
    shortcuts: Sequence[Shortcut] = (),
    *,
    file: tuple[Path | None, yaml.Node | None, dict[str, Any]] = (None, None, {}),
) -> RunConfig:
    """Apply shortcuts and ``--set`` overrides to a config tree and validate it.

    Used by :func:`load_run_config` and to adjust the config stored in a checkpoint.
    """
    merged = copy.deepcopy(tree)
    source: dict[tuple[str, ...], str] = {}
    for dotted, value, option in shortcuts:
        path = tuple(dotted.split("."))
        _set_path(merged, path, value, option)
        source[path] = option
    for text in overrides:
        path, value = parse_override(text)
        _set_path(merged, path, value, f"--set {text}")
        source[path] = f"--set {text}"
    try:
        return RunConfig.model_validate(merged, context={"task": merged.get("task", "recognition")})
    except ValidationError as err:
        raise ConfigError(_describe(err, *file, source)) from None


def _describe(
    err: ValidationError,
    config_file: Path | None,
    file_tree: yaml.Node | None,
    file_data: dict[str, Any],
    override_source: dict[tuple[str, ...], str],
) -> str:
    lines = ["invalid run configuration:"]
    for item in err.errors():
        loc = tuple(str(part) for part in item["loc"])
        field = ".".join(loc) or "(top level)"
        source = next(
            (src for path, src in override_source.items() if loc[: len(path)] == path), None
        )
        if source is None and file_tree is not None and _in_tree(file_data, loc):
            source = f"{config_file} line {_yaml_line(file_tree, loc)}"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown field"
        elif "input" in item and not isinstance(item["input"], dict):
            message += f" (got {item['input']!r})"
        lines.append(f"  {field}: {message}" + (f"  [from {source}]" if source else ""))
    return "\n".join(lines)


def _in_tree(tree: dict[str, Any], loc: tuple[str, ...]) -> bool:
    node: Any = tree
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


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
