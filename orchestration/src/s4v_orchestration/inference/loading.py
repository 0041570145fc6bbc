"""Exact loading: rebuild the model a checkpoint or an export was trained as, or refuse.

One function, :func:`load_model`, serves the Python API, ``s4v predict``/``index``/``export`` and
the MLflow model. From an s4v checkpoint (``best.pt``, ``last.pt``) or an export folder
(``model.safetensors`` + ``config.json``, see :mod:`s4v_orchestration.inference.export`) it
rebuilds the network the run trained, with the task's own builder and the run's config (preset,
method, every model setting, the seed a random backbone is drawn from), then checks:

* the backbone's identity: the open_clip tag; a local weights file must still be there with the
  sha256 it had (or be named again with ``weights=``); a random tower is redrawn from the run's
  seed and, for an export, must hash to what was trained;
* every trained tensor fits the rebuilt network, key for key and shape for shape;
* a recognition model has its class names.

What does not hold is refused with a :class:`ModelLoadError` naming the missing piece; nothing
loads "mostly" (``build_model`` + ``load_state_dict(strict=False)`` on a differently drawn random
backbone silently scores far below the trained model).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from torch import nn

from s4v_core.backbone import file_sha256
from s4v_core.checkpoint import CheckpointError, is_self_contained, load_checkpoint
from s4v_core.weights import WeightsFileError
from s4v_orchestration.config import MODEL_REGISTRIES, RunConfig
from s4v_orchestration.inference.media import Preprocessing
from s4v_orchestration.tasks.recognition import build_recognition_model
from s4v_orchestration.tasks.retrieval import build_retrieval_model

EXPORT_FORMAT = "s4v-export"
EXPORT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelLoadError(CheckpointError):
    """A checkpoint or export that cannot be rebuilt exactly; the message names what is missing."""


@dataclass(kw_only=True)
class LoadedModel:
    """A rebuilt model (eval mode) with everything needed to use it."""

    task: str  # "recognition" or "retrieval"
    model: nn.Module
    config: RunConfig
    preprocessing: Preprocessing
    backbone: dict[str, Any]  # {"name", "pretrained", "sha256"}
    class_names: list[str] = field(default_factory=list)  # recognition
    source: Path
    info: dict[str, Any] = field(default_factory=dict)  # epoch, metrics, MLflow run id
    frozen_sha256: str | None = None  # digest of the rebuilt frozen weights (random towers)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(kw_only=True)
class _Stored:
    """What a checkpoint or an export holds, in one shape."""

    task: str
    config: dict[str, Any]
    backbone: dict[str, Any]
    state: dict[str, torch.Tensor]
    class_names: list[str] | None
    info: dict[str, Any]
    frozen_sha256: str | None = None


def is_export(path: str | Path) -> bool:
    """True for a folder written by ``s4v export`` (it has ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def _read_export(folder: Path) -> _Stored:
    """``config.json`` (JSON) and ``model.safetensors``: no pickle is involved."""
    config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
    try:
        meta = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{config_path}: not a readable export config ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise ModelLoadError(f"{config_path}: not an s4v export (format {meta.get('format')!r})")
    if meta.get("version") != EXPORT_VERSION:
        raise ModelLoadError(
            f"{config_path}: export format version {meta.get('version')}, this s4v reads "
            f"{EXPORT_VERSION}"
        )
    for key in ("task", "config", "backbone"):
        if key not in meta:
            raise ModelLoadError(f"{config_path}: the field {key!r} is missing")
    if not weights_path.is_file():
        raise ModelLoadError(f"{folder}: the weights file {WEIGHTS_FILE} is missing")
    try:
        state = load_file(weights_path)
    except Exception as err:  # safetensors raises its own error types
        raise ModelLoadError(f"{weights_path}: not a readable safetensors file ({err})") from None
    return _Stored(
        task=meta["task"],
        config=meta["config"],
        backbone=meta["backbone"],
        state=state,
        class_names=meta.get("class_names"),
        info=meta.get("info", {}),
        frozen_sha256=meta.get("frozen_sha256"),
    )


def _read_checkpoint(path: Path) -> _Stored:
    try:
        state = load_checkpoint(path)
    except WeightsFileError as err:
        raise ModelLoadError(str(err)) from None
    if is_self_contained(state):
        raise ModelLoadError(
            f"{path} is a converted Side4Video release; test it with `s4v eval recognition`. "
            "Only checkpoints of s4v runs and their exports can be used for prediction."
        )
    if "config" not in state:  # load_checkpoint checked the fields every checkpoint has
        raise ModelLoadError(f"{path}: the checkpoint has no 'config' entry")
    info = {
        "epoch": state.get("epoch"),
        "best": state.get("best"),
        "metrics": state.get("metrics", {}),
        "mlflow_run_id": state.get("mlflow_run_id"),
    }
    return _Stored(
        task=state["task"],
        config=state["config"],
        backbone=state["backbone"],
        state=state["model"],
        class_names=state.get("class_names"),
        info=info,
    )


def read_stored(source: str | Path) -> _Stored:
    """The raw contents of a checkpoint or an export, without building anything."""
    path = Path(source)
    if path.is_dir():
        if not is_export(path):
            raise ModelLoadError(f"{path}: a folder but not an s4v export (no {CONFIG_FILE})")
        return _read_export(path)
    if not path.exists():
        raise ModelLoadError(f"{path}: no such checkpoint or export")
    return _read_checkpoint(path)


def frozen_digest(model: nn.Module) -> str:
    """sha256 of every weight and buffer that is not trained (the frozen backbone), by name."""
    trained = set(model.trainable_state_dict())
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name in trained:
            continue
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _config(stored: _Stored, source: Path) -> RunConfig:
    task = stored.task
    if task not in MODEL_REGISTRIES:
        raise ModelLoadError(
            f"{source}: unknown task {task!r}; this s4v has {list(MODEL_REGISTRIES)}"
        )
    presets, methods = MODEL_REGISTRIES[task]
    model = stored.config.get("model", {})
    for what, name, known in (
        ("preset", model.get("preset"), presets),
        ("method", model.get("method"), methods),
    ):
        if name not in known:
            raise ModelLoadError(
                f"{source}: unknown {task} {what} {name!r} (this s4v registers "
                f"{', '.join(known)}); it cannot be rebuilt here"
            )
    try:
        return RunConfig.model_validate(stored.config, context={"task": task})
    except ValidationError as err:
        fields = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors()
        )
        raise ModelLoadError(f"{source}: its run config is not valid here: {fields}") from None


def _resolve_backbone(
    config: RunConfig, backbone: dict[str, Any], source: Path, weights: str | Path | None
) -> dict[str, Any]:
    """Point the config at the backbone weights the model was trained on; the identity to expect."""
    expected = dict(backbone)
    sha = backbone.get("sha256")
    if sha is None:  # an open_clip tag, or a random tower redrawn from the run's seed
        if weights is not None:
            raise ModelLoadError(
                f"{source}: its backbone is {backbone.get('pretrained') or 'random'} "
                "(not a local file); do not pass backbone weights"
            )
        config.model.pretrained = backbone.get("pretrained")
        return expected
    path = Path(weights if weights is not None else backbone.get("pretrained"))
    if not path.is_file():
        raise ModelLoadError(
            f"{source}: the local backbone weights file {path} it was trained from is missing; "
            "pass its new location (weights=... in Python, --backbone-weights on the command line)"
        )
    digest = file_sha256(path)
    if digest != sha:
        raise ModelLoadError(
            f"{source}: the backbone weights file {path} changed since training: sha256 {digest}, "
            f"trained on {sha}"
        )
    config.model.pretrained = str(path)
    expected["pretrained"] = str(path)
    return expected


def load_model(
    source: str | Path,
    *,
    device: str | torch.device = "cpu",
    weights: str | Path | None = None,
) -> LoadedModel:
    """Rebuild exactly the model of a checkpoint or an export folder, in eval mode.

    Args:
        source: an s4v checkpoint (``best.pt``) or an ``s4v export`` folder.
        device: where the model goes.
        weights: the local backbone weights file, when it moved since training (checked by hash).

    Raises:
        ModelLoadError: naming what cannot be rebuilt (unknown preset or method, a missing or
            changed weights file, a random tower that does not redraw the same, trained tensors
            that do not fit, missing class names).
    """
    source = Path(source)
    stored = read_stored(source)
    config = _config(stored, source)
    expected = _resolve_backbone(config, stored.backbone, source, weights)
    class_names = list(stored.class_names or [])
    if stored.task == "recognition" and not class_names:
        raise ModelLoadError(f"{source}: it holds no class names; it cannot name its predictions")
    try:
        if stored.task == "recognition":
            model = build_recognition_model(config, len(class_names))
        else:
            model = build_retrieval_model(config)
    except (ValueError, RuntimeError, OSError) as err:
        raise ModelLoadError(f"{source}: cannot rebuild its model: {err}") from None
    if model.backbone_identity != expected:
        raise ModelLoadError(
            f"{source}: trained on backbone {expected} but the rebuilt model has "
            f"{model.backbone_identity}"
        )
    frozen = frozen_digest(model) if expected.get("pretrained") is None else None
    if stored.frozen_sha256 is not None and frozen != stored.frozen_sha256:
        raise ModelLoadError(
            f"{source}: the random backbone redrawn from seed {config.seed} is not the one it was "
            "trained with (another torch version draws differently); it cannot be rebuilt here"
        )
    try:
        model.load_trainable_state_dict(stored.state, str(source))
    except WeightsFileError as err:
        raise ModelLoadError(str(err)) from None
    model.eval().to(device)
    return LoadedModel(
        task=stored.task,
        model=model,
        config=config,
        preprocessing=Preprocessing.from_config(config),
        backbone=expected,
        class_names=class_names,
        source=source,
        info=stored.info,
        frozen_sha256=frozen,
    )
