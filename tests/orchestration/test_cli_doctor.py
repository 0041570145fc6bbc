"""`s4v doctor` and `s4v --help` through the real typer application."""

from __future__ import annotations

import subprocess
import sys

import torch
from typer.testing import CliRunner

from s4v_orchestration.cli import app

runner = CliRunner()


def test_help_lists_each_command_with_a_description() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0, result.output
    assert "doctor" in result.output
    assert "Print versions" in result.output


def test_doctor_reports_versions_device_and_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("S4V_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["doctor"], terminal_width=200)
    assert result.exit_code == 0, result.output
    out = result.output
    assert torch.__version__.split("+")[0] in out
    for label in ("python", "open_clip", "decord", "ray", "mlflow", "torch threads"):
        assert label in out
    assert f"sqlite:///{tmp_path / 'mlflow.db'}" in out
    assert str(tmp_path / "cache") in out
    assert ("not available" in out) != torch.cuda.is_available()


def test_console_script_runs_and_its_help_does_not_import_torch() -> None:
    # The installed entry point, not only the python object; `s4v --help` answers at once.
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "s4v_orchestration", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "doctor" in proc.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
    assert "typer" in imported and "torch" not in imported
