"""Fault injection through the real CLI: nothing lost, nothing silent, one-line errors."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from s4v_orchestration.cli import app

runner = CliRunner()


def _invoke(args: list[str]):
    return runner.invoke(app, args, terminal_width=200, catch_exceptions=False)


def _sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_a_copied_synthetic_set_with_other_parameters_is_left_alone(
    in_tmp, synthetic_root, tiny_overrides
) -> None:
    copy = in_tmp / "copy"
    shutil.copytree(synthetic_root, copy)
    (copy / "NOTES.txt").write_text("keep me")
    sets = tiny_overrides(**{"data.root": copy, "data.synthetic.num_frames": 12})
    result = _invoke(["run", "recognition", "--dataset", "synthetic", *_sets(sets)])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and "other parameters: num_frames 16, not 12" in result.output
    assert (copy / "NOTES.txt").read_text() == "keep me"
    assert sorted(p.name for p in in_tmp.iterdir()) == ["copy"]  # no new folder, no run
