"""``s4v export``: safetensors + config.json + model card, loaded back without any pickle."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.inference import ModelLoadError, load_model

runner = CliRunner()


def _no_pickle(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("loading an export must not unpickle anything")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)


def test_export_round_trip_is_bit_identical_without_pickle(
    recognition_checkpoint, tmp_path, monkeypatch, one_thread
):
    path, trained, _ = recognition_checkpoint
    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(path), str(out)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    card = (out / "README.md").read_text()
    assert "tiny / side4video on synthetic" in card and "moving left to right" in card
    meta = json.loads((out / "config.json").read_text())
    assert meta["class_names"][0] == "moving left to right" and meta["frozen_sha256"]

    _no_pickle(monkeypatch)
    loaded = load_model(out)
    clips = torch.randn(2, 8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded.model(clips), trained(clips))
    assert loaded.preprocessing.to_json() == meta["preprocessing"]


def test_an_export_whose_random_tower_redraws_differently_is_refused(
    recognition_checkpoint, tmp_path
):
    path, _, _ = recognition_checkpoint
    out = tmp_path / "export"
    assert runner.invoke(app, ["export", str(path), str(out)]).exit_code == 0
    meta = json.loads((out / "config.json").read_text())
    meta["frozen_sha256"] = "0" * 64
    (out / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="random backbone redrawn from seed"):
        load_model(out)
    (out / "model.safetensors").unlink()
    result = runner.invoke(app, ["predict", str(out), str(tmp_path)])
    assert result.exit_code == 2 and "model.safetensors is missing" in result.output
