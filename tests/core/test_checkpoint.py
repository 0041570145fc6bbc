"""The s4v checkpoint format: atomic writes, weights-only loads, format checks, saved models."""

from __future__ import annotations

import errno
import io
import random

import pytest
import torch

from s4v_core.checkpoint import (
    FORMAT,
    REQUIRED_FIELDS,
    VERSION,
    CheckpointError,
    SavedModel,
    is_self_contained,
    load_checkpoint,
    save_checkpoint,
    write_torch,
)
from s4v_core.weights import WeightsFileError

BASE = {"task": "recognition", "backbone": {"name": "s4v-tiny"}, "model": {}}


def test_checkpoint_round_trips_with_weights_only(tmp_path) -> None:
    state = {**BASE, "model": {"w": torch.arange(3.0)}, "epoch": 2, "config": {"lr": 0.1}}
    path = save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], torch.arange(3.0))
    assert (loaded["format"], loaded["version"]) == (FORMAT, VERSION)
    assert (loaded["epoch"], loaded["config"]) == (2, {"lr": 0.1})
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_failed_write_keeps_the_previous_checkpoint(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", {**BASE, "epoch": 1})

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint(path, {**BASE, "epoch": 2, "bad": Unpicklable()})
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _FailingFile(io.BytesIO):
    """A file whose third write raises ``error``, as a full disk or a signal handler would."""

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error, self.writes = error, 0

    def write(self, data) -> int:
        self.writes += 1
        if self.writes == 3:
            raise self.error
        return super().write(data)


@pytest.mark.parametrize(
    "error", [OSError(errno.EFBIG, "File too large"), KeyboardInterrupt()], ids=repr
)
def test_what_stopped_a_write_is_raised_as_itself(error) -> None:
    """torch's zip writer reported both as a RuntimeError about positions: a Ctrl-C or SIGTERM
    while saving then failed the run instead of stopping it."""
    with pytest.raises(type(error)) as raised:
        write_torch(_FailingFile(error), {"w": torch.zeros(1000)})
    assert raised.value is error


def test_checkpoint_with_arbitrary_objects_is_refused_without_unpickling(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "version": VERSION, **BASE, "obj": random.Random()}, path)
    with pytest.raises(WeightsFileError, match=r"evil\.pt: .*weights_only=True refused"):
        load_checkpoint(path)


def test_foreign_missing_and_other_version_files_are_refused_naming_them(tmp_path) -> None:
    path = tmp_path / "released.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(CheckpointError, match=r"released\.pt: not an s4v checkpoint.*s4v convert"):
        load_checkpoint(path)
    with pytest.raises(WeightsFileError, match=r"missing\.pt: no such file"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"format": FORMAT, "version": VERSION + 1, **BASE}, path)
    with pytest.raises(CheckpointError, match=rf"format version {VERSION + 1}, .* {VERSION}$"):
        load_checkpoint(path)


@pytest.mark.parametrize("field", REQUIRED_FIELDS)
def test_a_checkpoint_without_a_required_field_is_refused_naming_it(tmp_path, field) -> None:
    path = save_checkpoint(tmp_path / "c.pt", {k: v for k, v in BASE.items() if k != field})
    with pytest.raises(CheckpointError, match=rf"c\.pt: s4v checkpoint without field '{field}'"):
        load_checkpoint(path)


def test_a_saved_model_round_trips_and_keeps_the_on_disk_layout(tmp_path) -> None:
    saved = SavedModel(
        task="recognition",
        preset="tiny",
        method="side4video",
        num_classes=5,
        num_frames=4,
        side_dim=16,
        dropout=0.0,
        backbone={"name": "s4v-tiny", "pretrained": None, "sha256": None},
        trainable={"head.weight": torch.ones(5, 16)},
        frozen={"encoder.backbone.conv1.weight": torch.zeros(2)},
    )
    path = save_checkpoint(tmp_path / "m.pt", saved.fields())
    loaded = load_checkpoint(path)
    assert is_self_contained(loaded)
    # The layout converted releases have always had (files written before still load).
    assert loaded["settings"] == {"num_frames": 4, "side_dim": 16, "dropout": 0.0}
    assert set(loaded["backbone_state_dict"]) == {"encoder.backbone.conv1.weight"}
    again = SavedModel.from_checkpoint(loaded, path)
    assert (again.preset, again.method, again.num_classes, again.settings) == (
        saved.preset,
        saved.method,
        saved.num_classes,
        saved.settings,
    )
    assert torch.equal(again.trainable["head.weight"], saved.trainable["head.weight"])
    del loaded["settings"]["side_dim"]
    with pytest.raises(CheckpointError, match=r"m\.pt: self-contained .* without 'side_dim'"):
        SavedModel.from_checkpoint(loaded, path)


def test_a_training_checkpoint_is_not_a_saved_model(tmp_path) -> None:
    loaded = load_checkpoint(save_checkpoint(tmp_path / "last.pt", BASE))
    assert not is_self_contained(loaded)
    with pytest.raises(CheckpointError, match=r"last\.pt: holds no backbone weights"):
        SavedModel.from_checkpoint(loaded, tmp_path / "last.pt")
