"""`s4v data prepare`'s library: class folders -> seeded stratified lists, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4v_data.annotations import read_labels, read_video_list
from s4v_data.dataset_file import read_dataset_file
from s4v_data.prepare import (
    PrepareError,
    parse_fractions,
    scan_folder,
    split_videos,
    write_dataset_yaml,
    write_lists,
)


def _folder(root: Path, counts: dict[str, int], prefix: str = "", first: int = 0) -> Path:
    """Class folders with empty stand-in video files (the split never opens them)."""
    for name, count in counts.items():
        folder = root / prefix / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + count):
            (folder / f"{name}_{i:02d}.mp4").write_bytes(b"")
    return root


def _prepare(folder: Path, out: Path, split: str = "0.6,0.2,0.2", seed: int = 0) -> Path:
    scanned = scan_folder(folder)
    splits = split_videos(scanned, parse_fractions(split), seed)
    names = write_lists(out, splits, scanned.class_names)
    return write_dataset_yaml(
        out, name="mine", root=scanned.root, lists=names, num_classes=3, source="video"
    )


def test_the_same_folder_and_seed_give_identical_lists(tmp_path) -> None:
    folder = _folder(tmp_path / "videos", {"walk": 10, "run": 12, "jump": 9})
    first = _prepare(folder, tmp_path / "a").parent
    again = _prepare(folder, tmp_path / "b").parent
    other = _prepare(folder, tmp_path / "c", seed=1).parent
    for name in ("train_videos.txt", "val_videos.txt", "test_videos.txt", "labels.csv"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    assert (first / "train_videos.txt").read_bytes() != (other / "train_videos.txt").read_bytes()


def test_the_split_is_stratified_and_every_video_lands_in_one_split(tmp_path) -> None:
    folder = _folder(tmp_path / "videos", {"walk": 10, "run": 12, "jump": 9})
    dataset = read_dataset_file(_prepare(folder, tmp_path / "out"))
    assert read_labels(dataset.labels) == ["jump", "run", "walk"]  # sorted class names
    lists = {s: read_video_list(dataset.split_list(s)) for s in ("train", "val", "test")}
    counts = {s: [sum(r.label == c for r in recs) for c in range(3)] for s, recs in lists.items()}
    # jump 9, run 12, walk 10 videos: 20 % each (rounded) to val and test, the rest to train.
    assert counts == {"train": [5, 8, 6], "val": [2, 2, 2], "test": [2, 2, 2]}
    paths = [r.path for recs in lists.values() for r in recs]
    assert len(paths) == len(set(paths)) == 31
    assert all((folder / p).is_file() for p in paths)
    assert all(p.split("/")[0] == ["jump", "run", "walk"][r.label]
               for recs in lists.values() for r in recs for p in [r.path])  # fmt: skip


def test_non_videos_are_skipped_and_counted_and_subfolders_are_searched(tmp_path) -> None:
    folder = _folder(tmp_path / "videos", {"walk": 3, "run": 3})
    (folder / "walk" / "notes.txt").write_text("x")
    (folder / "walk" / ".DS_Store").write_bytes(b"")
    (folder / "README.md").write_text("x")
    (folder / "run" / "day2").mkdir()
    (folder / "run" / "day2" / "late.MOV").write_bytes(b"")
    scanned = scan_folder(folder)
    assert sorted(scanned.skipped) == ["README.md", "walk/.DS_Store", "walk/notes.txt"]
    assert "run/day2/late.MOV" in scanned.videos["all"]["run"]


def test_split_folders_of_the_folder_are_kept(tmp_path) -> None:
    folder = _folder(tmp_path / "videos", {"walk": 4, "run": 3}, prefix="train")
    _folder(folder, {"walk": 1, "run": 1}, prefix="val", first=10)
    scanned = scan_folder(folder)
    assert scanned.presplit
    splits = split_videos(scanned, (0.8, 0.1, 0.1), seed=0)
    assert {s: len(r) for s, r in splits.items()} == {"train": 7, "val": 2}
    assert splits["val"][0].path == "val/run/run_10.mp4" and splits["val"][0].label == 0


@pytest.mark.parametrize(
    ("layout", "split", "message"),
    [
        ({"walk": 3, "run": 0}, "0.6,0.2,0.2", r"class 'run' has no videos in .*/run"),
        ({"walk": 3, "run": 2}, "0.6,0.2,0.2", r"class 'run' has 2 video\(s\); .* at least 3"),
        ({"walk": 3}, "0.6,0.2", r"the fractions sum to 0.8, not 1"),
        ({"walk": 3}, "0.5,0,0.5", r"validation fraction must be positive"),
        ({"walk": 3}, "a,b", r"expected fractions such as 0.8,0.1,0.1"),
    ],
)
def test_bad_folders_and_splits_are_clear_errors(tmp_path, layout, split, message) -> None:
    folder = _folder(tmp_path / "videos", layout)
    with pytest.raises(PrepareError, match=message):
        split_videos(scan_folder(folder), parse_fractions(split), seed=0)


def test_the_same_video_in_two_split_folders_is_an_error(tmp_path) -> None:
    folder = _folder(tmp_path / "videos", {"walk": 3}, prefix="train")
    _folder(folder, {"walk": 1}, prefix="test")
    with pytest.raises(PrepareError, match=r"'walk_00.mp4' of class 'walk' is in two splits"):
        scan_folder(folder)


def test_an_empty_folder_and_paths_with_spaces_are_errors(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match="has no class sub-folders"):
        scan_folder(tmp_path / "empty")
    folder = _folder(tmp_path / "videos", {"jumping jacks": 3})
    with pytest.raises(PrepareError, match="contain white space"):
        scan_folder(folder)
