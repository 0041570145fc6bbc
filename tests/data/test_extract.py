"""Frame extraction on real MP4 files: counts, resampling, broken files, resumption, cache keys."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from s4v_data import VideoRecord, read_rawframe_list, read_video_list
from s4v_data.extract import (
    CACHE_FILE,
    TMP_DIR,
    CacheMismatchError,
    ExtractConfig,
    extract_videos,
    resample_indices,
)

SMALL = ExtractConfig(short_side=24, frame_template="{:05d}.jpg")


def _videos(info, count: int | None = None) -> list[VideoRecord]:
    return read_video_list(info.val_video_list)[:count]


def test_resample_indices_hand_computed() -> None:
    assert resample_indices(10, 30.0, 10.0) == [0, 3, 6, 9]
    assert resample_indices(10, 25.0, 10.0) == [0, 2, 5, 7]  # step 2.5, floored
    assert resample_indices(5, 30.0, None) == [0, 1, 2, 3, 4]
    assert resample_indices(5, 10.0, 30.0) == [0, 1, 2, 3, 4]  # never duplicates frames


def test_extracts_every_frame_resized_with_true_counts(tiny_synthetic, tmp_path) -> None:
    records = _videos(tiny_synthetic, 3)
    report = extract_videos(records, tiny_synthetic.root, tmp_path / "out", SMALL, workers=2)
    assert report.count("extracted") == 3
    for record, entry in zip(records, report.records(), strict=True):
        assert entry.path == record.path.removesuffix(".mp4")
        assert entry.label == record.label
        folder = tmp_path / "out" / entry.path
        assert entry.num_frames == len(os.listdir(folder)) == 12
        assert Image.open(folder / "00001.jpg").size == (24, 24)
    assert not (tmp_path / "out" / TMP_DIR).exists()


def test_fps_resampling_keeps_every_other_frame(tiny_synthetic, tmp_path) -> None:
    # the synthetic MP4s are written at 8 fps
    config = ExtractConfig(short_side=None, fps=4.0)
    report = extract_videos(_videos(tiny_synthetic, 1), tiny_synthetic.root, tmp_path, config)
    assert report.records()[0].num_frames == 6
    assert Image.open(tmp_path / report.records()[0].path / "img_00001.jpg").size == (32, 32)


def _broken_copy(info, tmp_path):
    """Videos folder with a truncated file and a FIFO (opening it blocks decord forever)."""
    root = tmp_path / "videos_root"
    shutil.copytree(info.root / "videos", root / "videos")
    records = _videos(info, 3)
    truncated = root / records[0].path
    truncated.write_bytes(truncated.read_bytes()[:300])
    os.mkfifo(root / "videos" / "hangs.mp4")
    return root, [*records, VideoRecord(path="videos/hangs.mp4", label=0)]


def test_broken_and_hanging_videos_are_reported_and_the_rest_extracted(
    tiny_synthetic, tmp_path
) -> None:
    root, records = _broken_copy(tiny_synthetic, tmp_path)
    out = tmp_path / "out"
    start = time.monotonic()
    report = extract_videos(records, root, out, SMALL, workers=2, timeout=3.0)
    assert time.monotonic() - start < 30
    status = {r.path: r for r in report.results}
    assert status[records[0].path].status == "failed"
    assert "timed out after 3 s" in status["videos/hangs.mp4"].error
    assert [status[r.path].status for r in records[1:3]] == ["extracted", "extracted"]
    # nothing half-written: only the two good videos have folders, no temporary folders remain
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(
        r.path.split("/")[1].removesuffix(".mp4") for r in records[1:3]
    )
    assert not (out / TMP_DIR).exists()


def test_missing_video_is_reported_without_decoding(tiny_synthetic, tmp_path) -> None:
    records = [VideoRecord(path="videos/nope.mp4", label=1)]
    report = extract_videos(records, tiny_synthetic.root, tmp_path, SMALL)
    assert report.failed[0].error.startswith("no such file")


def test_other_settings_on_the_same_cache_are_refused(tiny_synthetic, tmp_path) -> None:
    records = _videos(tiny_synthetic, 1)
    extract_videos(records, tiny_synthetic.root, tmp_path, SMALL)
    assert (tmp_path / CACHE_FILE).is_file()
    other = ExtractConfig(short_side=16, frame_template="{:05d}.jpg")
    with pytest.raises(CacheMismatchError, match="short_side: cache 24 vs now 16"):
        extract_videos(records, tiny_synthetic.root, tmp_path, other)
    again = extract_videos(records, tiny_synthetic.root, tmp_path, SMALL)  # same settings: fine
    assert again.count("skipped") == 1


def test_two_videos_sharing_a_frame_folder_are_refused(tmp_path) -> None:
    records = [VideoRecord(path="a/x.mp4", label=0), VideoRecord(path="a/x.webm", label=0)]
    with pytest.raises(ValueError, match="share the frame folder a/x"):
        extract_videos(records, tmp_path, tmp_path / "out", SMALL)


def test_killed_run_leaves_no_partial_folder_and_a_rerun_finishes(tiny_synthetic, tmp_path) -> None:
    root, records = _broken_copy(tiny_synthetic, tmp_path)
    good = records[1:3]
    hanging = records[3]
    more = _videos(tiny_synthetic)[3:6]
    out = tmp_path / "out"
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"{r.path} {r.label}\n" for r in [*good, hanging, *more]))
    # one worker: the good videos finish, then the run hangs on the FIFO until we kill it
    command = [sys.executable, "-m", "s4v_orchestration", "data", "extract", str(root), str(out),
               "--list", str(listing), "--workers", "1", "--timeout", "120", "--short-side", "24"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    done = [out / r.path.removesuffix(".mp4") for r in good]
    while not all(d.is_dir() for d in done) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert all(d.is_dir() for d in done)
    # a stale temporary folder, as a kill in the middle of writing frames leaves it
    stale = out / TMP_DIR / "999999999-deadbeef"
    stale.mkdir(parents=True)
    (stale / "img_00001.jpg").write_bytes(b"partial")
    assert not (out / hanging.path.removesuffix(".mp4")).exists()

    listing.write_text("".join(f"{r.path} {r.label}\n" for r in [*good, *more]))
    config = ExtractConfig(short_side=24)
    report = extract_videos(read_video_list(listing), root, out, config)
    assert [r.status for r in report.results] == ["skipped"] * 2 + ["extracted"] * 3
    assert all(r.num_frames == 12 for r in report.results)
    assert not (out / TMP_DIR).exists()


def test_extracted_frames_feed_the_rawframe_dataset(tiny_synthetic, tmp_path) -> None:
    from s4v_data import DATASETS, VideoClipDataset, write_rawframe_list

    report = extract_videos(
        _videos(tiny_synthetic, 2), tiny_synthetic.root, tmp_path, ExtractConfig()
    )
    write_rawframe_list(tmp_path / "list.txt", report.records())
    assert read_rawframe_list(tmp_path / "list.txt") == report.records()
    dataset = VideoClipDataset(
        tmp_path / "list.txt",
        tmp_path,
        spec=DATASETS["synthetic"],
        num_frames=8,
        mode="val",
        input_size=24,
    )
    assert dataset[1][0].shape == (8, 3, 24, 24)
