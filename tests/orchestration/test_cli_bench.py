"""`s4v bench memory` through the real typer application, on the tiny preset."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from s4v_orchestration.cli import app

runner = CliRunner()


def test_bench_memory_prints_a_table_and_writes_json_and_a_chart(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "memory", "--preset", "tiny", "--repeats", "1", "--light-side-dim", "64",
         "--threads", "2", "--device", "cpu", "--out", str(tmp_path)],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    methods = (
        "side4video",
        "side4video-light",
        "reference-layout",
        "full-finetune",
        "linear-probe",
    )
    for method in methods:
        assert method in result.output
    assert "side4video / reference-layout: fwd+bwd" in result.output
    report = json.loads((tmp_path / "memory-tiny-fp32-b2x8.json").read_text())
    assert report["settings"]["threads"] == 2 and report["settings"]["precision"] == "fp32"
    assert [r["method"] for r in report["results"]] == list(methods)
    saved = {r["method"]: r["saved_mib"] for r in report["results"]}
    assert saved["side4video-light"] < saved["side4video"] < saved["reference-layout"]
    ratio = report["against_reference"]["saved_ratio"]
    assert ratio == saved["side4video"] / saved["reference-layout"]
    assert (tmp_path / "memory-tiny-fp32-b2x8.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_memory_rejects_unknown_methods(tmp_path) -> None:
    result = runner.invoke(
        app, ["bench", "memory", "--methods", "lora", "--out", str(tmp_path)], terminal_width=200
    )
    assert result.exit_code == 2
    assert "unknown methods" in result.output
