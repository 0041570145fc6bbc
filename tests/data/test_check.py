"""`check_dataset` finds each kind of problem and nothing on a clean dataset."""

from __future__ import annotations

import shutil

from s4v_data.check import check_dataset


def test_clean_synthetic_dataset_has_no_problems(tiny_synthetic) -> None:
    info = tiny_synthetic
    for list_file in (info.train_list, info.train_video_list):
        report = check_dataset(list_file, info.root, num_classes=8)
        assert report.problems == []
        assert report.ok == report.entries == 16
        assert report.frames == 16 * 12


def test_rawframe_problems_are_each_found(tiny_synthetic, tmp_path) -> None:
    info = tiny_synthetic
    root = tmp_path / "root"
    shutil.copytree(info.root / "rawframes", root / "rawframes")
    lines = info.val_list.read_text().splitlines()[:4]
    folders = [root / line.split()[0] for line in lines]
    (folders[0] / "img_00012.jpg").unlink()  # one frame fewer than listed
    (folders[1] / "img_00012.jpg").write_bytes(b"not a jpeg")  # unreadable last frame
    shutil.rmtree(folders[2])  # missing folder
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 8"  # label outside 0..7
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    report = check_dataset(listing, root, num_classes=8)
    kinds = {(p.kind, p.path) for p in report.problems}
    paths = [line.split()[0] for line in lines]
    assert kinds == {
        ("frame-count", paths[0]),
        ("unreadable", paths[1]),
        ("missing", paths[2]),
        ("label", paths[3]),
    }
    assert report.ok == 0


def test_video_problems_are_found(tiny_synthetic, tmp_path) -> None:
    info = tiny_synthetic
    root = tmp_path / "root"
    shutil.copytree(info.root / "videos", root / "videos")
    lines = info.val_video_list.read_text().splitlines()[:3]
    broken = root / lines[0].split()[0]
    broken.write_bytes(broken.read_bytes()[:500])
    (root / lines[1].split()[0]).unlink()
    listing = tmp_path / "videos.txt"
    listing.write_text("\n".join(lines) + "\n")
    report = check_dataset(listing, root, depth="all")
    assert [(p.kind, p.path) for p in report.problems] == [
        ("unreadable", lines[0].split()[0]),
        ("missing", lines[1].split()[0]),
    ]
    assert report.ok == 1 and report.frames == 12
