"""The s4v checkpoint format: what ``best.pt``, ``last.pt`` and converted releases hold.

An s4v checkpoint is one ``torch.save`` dict of tensors and plain Python values, so that it loads
with ``torch.load(weights_only=True)`` (through :func:`s4v_core.weights.read_torch_file`). Every
checkpoint has

* ``format``: :data:`FORMAT`, and ``version``: :data:`VERSION` (added by :func:`save_checkpoint`);
* ``task``: ``"recognition"`` or ``"retrieval"``;
* ``backbone``: the frozen backbone's identity ``{"name", "pretrained", "sha256"}``;
* ``model``: the trained tensors only (side network, head, BatchNorm statistics), as
  ``trainable_state_dict()`` returns them; never the frozen backbone.

A training run's checkpoint adds ``config`` (the resolved run config, JSON values), ``optimizer``,
``scheduler``, ``scaler``, ``rng`` (one entry per rank), ``world_size``, ``epoch``, ``step``,
``best``, ``metrics``, ``mlflow_run_id`` and the task's own entries (recognition: ``class_names``).

A *self-contained* checkpoint (``s4v convert side4video`` writes one) carries what rebuilding its
model needs without a run config or another file: the fields of :class:`SavedModel` (``preset``,
``method``, ``num_classes``, ``settings`` and the frozen weights in ``backbone_state_dict``). It may
carry a ``config`` as well.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from s4v_core.weights import CHECKPOINT_FORMAT, WeightsFileError, read_torch_file

FORMAT = CHECKPOINT_FORMAT
VERSION = 1
# Fields every s4v checkpoint has (besides format and version).
REQUIRED_FIELDS = ("task", "backbone", "model")


class CheckpointError(WeightsFileError):
    """A file that is not an s4v checkpoint, or one that does not belong where it is used."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` as an s4v checkpoint, atomically: a temporary file in the same folder, then
    a rename, so that a process killed while saving leaves the previous file intact.

    ``format`` and ``version`` are added; ``state`` holds the other fields (see the module doc).

    Raises:
        OSError: the file could not be written (a full disk, a file-size limit), with ``path`` as
            its file name; the previous file at ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            try:
                write_torch(handle, {"format": FORMAT, "version": VERSION, **state})
                handle.flush()
                os.fsync(handle.fileno())
            except OSError as err:
                raise OSError(err.errno, err.strerror, str(path)) from None
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def write_torch(handle: BinaryIO, obj: Any) -> None:
    """``torch.save(obj, handle)``, raising what stopped a write as itself.

    torch's zip writer turns an exception raised by ``handle.write`` into a ``RuntimeError``
    about file positions. That hid a full disk or a file-size limit (``OSError``), and a Ctrl-C or
    SIGTERM that landed while a checkpoint was written (``KeyboardInterrupt``), which then failed
    the run with a traceback instead of stopping it cleanly.
    """
    recorder = _WriteErrors(handle)
    try:
        torch.save(obj, recorder)
    except RuntimeError:
        if recorder.error is not None:
            raise recorder.error.with_traceback(None) from None
        raise


class _WriteErrors:
    """A binary file that remembers the first exception its ``write`` raised."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self.error: BaseException | None = None

    def write(self, data: bytes) -> int:
        try:
            return self._handle.write(data)
        except BaseException as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self._handle.flush()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read an s4v checkpoint on the CPU (``weights_only=True``) and check its format.

    Raises:
        WeightsFileError: the file is missing or not a torch file of tensors.
        CheckpointError: it is not an s4v checkpoint (a release not yet converted), has another
            format version, or lacks one of :data:`REQUIRED_FIELDS`.
    """
    path = Path(path)
    state = read_torch_file(path)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not an s4v checkpoint (no format tag {FORMAT!r}); released Side4Video "
            "weights must first be converted with `s4v convert side4video`"
        )
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: s4v checkpoint format version {state.get('version')!r}, this s4v reads "
            f"version {VERSION}"
        )
    missing = [name for name in REQUIRED_FIELDS if name not in state]
    if missing:
        raise CheckpointError(f"{path}: s4v checkpoint without field {missing[0]!r}")
    return state


def is_self_contained(checkpoint: dict[str, Any]) -> bool:
    """Whether a loaded checkpoint carries its frozen weights (see :class:`SavedModel`)."""
    return "backbone_state_dict" in checkpoint


@dataclass(frozen=True, kw_only=True)
class SavedModel:
    """The model of a self-contained checkpoint: what rebuilding it needs, with no other file.

    Stored in the checkpoint as ``task``, ``preset``, ``method``, ``num_classes``, ``settings``
    (``num_frames``, ``side_dim``, ``dropout``), ``backbone``, ``model`` and
    ``backbone_state_dict``.
    """

    task: str
    preset: str  # the task's model preset (``side4video-b16``, ``tiny``, ...)
    method: str
    num_classes: int
    num_frames: int
    side_dim: int
    dropout: float
    backbone: dict[str, Any]  # identity: {"name", "pretrained", "sha256"}
    trainable: dict[str, torch.Tensor]  # the checkpoint's "model"
    frozen: dict[str, torch.Tensor]  # the frozen backbone's weights

    @property
    def settings(self) -> dict[str, Any]:
        """The preset fields the model was built with (``build_model`` keyword arguments)."""
        return {"num_frames": self.num_frames, "side_dim": self.side_dim, "dropout": self.dropout}

    def fields(self) -> dict[str, Any]:
        """The checkpoint fields that store this model (for :func:`save_checkpoint`)."""
        return {
            "task": self.task,
            "preset": self.preset,
            "method": self.method,
            "num_classes": self.num_classes,
            "settings": self.settings,
            "backbone": self.backbone,
            "model": self.trainable,
            "backbone_state_dict": self.frozen,
        }

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], path: str | Path) -> SavedModel:
        """The model stored in a loaded checkpoint.

        Raises:
            CheckpointError: naming ``path`` and the missing field, when it is not self-contained.
        """
        if not is_self_contained(checkpoint):
            raise CheckpointError(
                f"{path}: holds no backbone weights ('backbone_state_dict'); it is not a "
                "converted release"
            )
        settings = checkpoint.get("settings")
        fields = {**checkpoint, **(settings if isinstance(settings, dict) else {})}
        names = ("preset", "method", "num_classes", "num_frames", "side_dim", "dropout")
        for name in names:
            if name not in fields:
                raise CheckpointError(f"{path}: self-contained s4v checkpoint without {name!r}")
        return cls(
            task=checkpoint["task"],
            **{name: fields[name] for name in names},
            backbone=checkpoint["backbone"],
            trainable=checkpoint["model"],
            frozen=checkpoint["backbone_state_dict"],
        )
