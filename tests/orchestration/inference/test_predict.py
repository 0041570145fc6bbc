"""``s4v predict``: good files are predicted, a broken one is reported, the exit status says so."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from s4v_orchestration.cli import app
from s4v_orchestration.inference import load_recognizer

runner = CliRunner()


def test_predict_reports_a_broken_file_and_predicts_the_others(
    recognition_checkpoint, synthetic_root, tmp_path
):
    path, _, _ = recognition_checkpoint
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"this is not a video")
    good = [
        synthetic_root / "rawframes" / "vid_00_0000",
        synthetic_root / "videos" / "vid_03_0000.mp4",
    ]
    out = tmp_path / "predictions.json"
    result = runner.invoke(
        app,
        ["predict", str(path), str(good[0]), str(broken), str(good[1]), "-k", "2",
         "--out", str(out), "--workers", "1", "--batch-size", "3", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "broken.mp4" in result.output and "1 of 3 inputs could not be read" in result.output
    rows = json.loads(out.read_text())
    assert [row["path"] for row in rows] == [str(good[0]), str(broken), str(good[1])]
    assert "error" in rows[1] and "segments" not in rows[1]
    recognizer = load_recognizer(path)
    expected = recognizer.predict(good[0], k=2)
    top = rows[0]["segments"][0]["top_k"]
    assert [e["label"] for e in top] == [label for label, _ in expected]
    assert [e["probability"] for e in top] == pytest.approx([p for _, p in expected], abs=1e-6)
    assert len(rows[2]["segments"][0]["top_k"]) == 2


def test_predict_windows_a_video_into_timed_segments(recognition_checkpoint, synthetic_root):
    path, _, _ = recognition_checkpoint
    video = synthetic_root / "videos" / "vid_00_0000.mp4"  # 16 frames at 8 fps: 2 s
    result = runner.invoke(
        app,
        ["predict", str(path), str(video), "--window", "1", "--stride", "0.5",
         "--format", "csv", "-k", "1", "--workers", "0", "--no-progress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    spans = [tuple(line.split(",")[1:3]) for line in lines[1:]]
    assert spans == [("0.000", "1.000"), ("0.500", "1.500"), ("1.000", "2.000")]


def test_predict_refuses_a_retrieval_model(retrieval_checkpoint, synthetic_root):
    path, _, _ = retrieval_checkpoint
    result = runner.invoke(app, ["predict", str(path), str(synthetic_root), "--no-progress"])
    assert result.exit_code == 2
    assert "retrieval model" in result.output
