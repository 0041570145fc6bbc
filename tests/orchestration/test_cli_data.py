"""`s4v data synth|extract|check` and `s4v bench data` through the real typer application."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from s4v_data import read_rawframe_list
from s4v_orchestration.cli import app

runner = CliRunner()
TINY = ["--videos-per-class", "2", "--num-frames", "8", "--size", "32", "--val-fraction", "0.5"]


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "syn"
    result = runner.invoke(app, ["data", "synth", str(root), *TINY], terminal_width=200)
    assert result.exit_code == 0, result.output
    return root


def test_synth_writes_the_dataset_and_summarises_it(synth_root) -> None:
    assert (synth_root / "labels.csv").is_file()
    assert len(read_rawframe_list(synth_root / "train_rawframes.txt")) == 8
    again = runner.invoke(app, ["data", "synth", str(synth_root), *TINY], terminal_width=200)
    assert again.exit_code == 0 and "circling clockwise" in again.output


def test_synth_rejects_an_odd_size_with_a_clear_error(tmp_path) -> None:
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "x"), "--size", "15"])
    assert result.exit_code == 2
    assert "size must be even" in result.output


def test_extract_writes_frames_and_list_and_reports_bad_videos(synth_root, tmp_path) -> None:
    listing = tmp_path / "val_videos.txt"
    good = (synth_root / "val_videos.txt").read_text()
    listing.write_text(good + "videos/missing.mp4 3\n")
    out = tmp_path / "frames"
    args = [
        "data",
        "extract",
        str(synth_root),
        str(out),
        "--list",
        str(listing),
        "--short-side",
        "20",
    ]
    result = runner.invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output  # something was extracted
    assert "videos/missing.mp4" in result.output and "unreadable" in result.output
    records = read_rawframe_list(out / "val_rawframes.txt")
    assert len(records) == 8 and all(r.num_frames == 8 for r in records)
    strict = runner.invoke(app, [*args, "--strict"], terminal_width=200)
    assert strict.exit_code == 1  # the same failure is fatal with --strict
    assert re.search(r"already there \(skipped\)\s+│ 8 ", strict.output)


def test_extract_exits_non_zero_when_nothing_was_extracted(synth_root, tmp_path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("videos/a.mp4 0\nvideos/b.mp4 1\n")
    result = runner.invoke(
        app, ["data", "extract", str(synth_root), str(tmp_path / "o"), "--list", str(listing)]
    )
    assert result.exit_code == 1
    assert "no video could be extracted" in result.output


def test_extract_names_the_bad_line_of_a_malformed_list(synth_root, tmp_path) -> None:
    listing = tmp_path / "bad.txt"
    listing.write_text("videos/a.mp4 0\nvideos/b.mp4\n")
    result = runner.invoke(
        app, ["data", "extract", str(synth_root), str(tmp_path / "o"), "--list", str(listing)],
        terminal_width=300,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "bad.txt:2: expected 2 fields" in result.output


def test_check_passes_a_clean_dataset_and_fails_a_broken_one(synth_root, tmp_path) -> None:
    clean = runner.invoke(
        app,
        ["data", "check", "--list", str(synth_root / "train_rawframes.txt"), "--root",
         str(synth_root), "--dataset", "synthetic"],
        terminal_width=200,
    )  # fmt: skip
    assert clean.exit_code == 0, clean.output
    broken = tmp_path / "broken.txt"
    broken.write_text("rawframes/vid_00_0000 9 0\nrawframes/nowhere 8 1\n")
    result = runner.invoke(
        app,
        ["data", "check", "--list", str(broken), "--root", str(synth_root), "--labels",
         str(synth_root / "labels.csv")],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "frame-count: rawframes/vid_00_0000" in result.output
    assert "missing: rawframes/nowhere" in result.output


def test_bench_data_reports_rates_and_both_target_ratios(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "data", "--size", "32", "--video-frames", "16", "--videos-per-class", "2",
         "--repeats", "1", "--data-dir", str(tmp_path / "bench")],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    for row in ("rawframes", "video-in-process", "decord-raw"):
        assert row in result.output
    assert "rawframes / video loader" in result.output
    assert "video loader / raw decord" in result.output


def test_bench_data_per_worker_rates_size_the_workers_for_a_feed_rate(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "data", "--size", "32", "--video-frames", "16", "--videos-per-class", "2",
         "--repeats", "1", "--data-dir", str(tmp_path / "bench"), "--per-worker", "0,1",
         "--feed", "1000000"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cells = r"│\s*(rawframes|video)\s*│\s*(\d)\s*│\s*([\d.]+)\s*│\s*([\d.]+)\s*│"
    rows = re.findall(cells, result.output)
    assert sorted((source, workers) for source, workers, _, _ in rows) == [
        ("rawframes", "0"), ("rawframes", "1"), ("video", "0"), ("video", "1"),
    ]  # fmt: skip
    for _, workers, rate, per_worker in rows:
        expected = float(rate) / max(1, int(workers))  # the in-process loader counts as one
        assert float(rate) > 0 and float(per_worker) == pytest.approx(expected, abs=0.06)
    # a million clips/s needs many workers at these per-worker rates; the count is printed
    needed = re.findall(r"^(rawframes|video): about (\d+) workers keep", result.output, re.M)
    assert {source for source, _ in needed} == {"rawframes", "video"}
    assert all(int(count) > 100 for _, count in needed)


def test_bench_data_per_worker_rejects_bad_counts(tmp_path) -> None:
    result = runner.invoke(
        app,
        ["bench", "data", "--size", "32", "--video-frames", "16", "--videos-per-class", "2",
         "--repeats", "1", "--data-dir", str(tmp_path / "bench"), "--per-worker", "one,2"],
        terminal_width=200,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--per-worker takes comma-separated worker counts" in result.output
