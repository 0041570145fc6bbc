"""`check_dataset` finds each kind of problem and nothing on a clean dataset."""

from __future__ import annotations

import shutil

import pytest

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
    (folders[0] / "img_00012.jpg").unlink()  # one frame fewer than listed: missing and miscounted
    (folders[1] / "img_00012.jpg").write_bytes(b"not a jpeg")  # unreadable last frame
    shutil.rmtree(folders[2])  # missing folder
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 8"  # label outside 0..7
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    report = check_dataset(listing, root, num_classes=8)
    kinds = {(p.kind, p.path) for p in report.problems}
    paths = [line.split()[0] for line in lines]
    assert kinds == {
        ("missing", paths[0]),
        ("frame-count", paths[0]),
        ("unreadable", paths[1]),
        ("missing", paths[2]),
        ("label", paths[3]),
    }
    assert report.ok == 0


def _copy_rawframes(info, tmp_path, count: int):
    root = tmp_path / "root"
    shutil.copytree(info.root / "rawframes", root / "rawframes")
    lines = info.val_list.read_text().splitlines()[:count]
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(lines) + "\n")
    return root, listing, [line.split()[0] for line in lines]


def test_a_missing_middle_frame_beside_a_stray_file_is_found(tiny_synthetic, tmp_path) -> None:
    root, listing, paths = _copy_rawframes(tiny_synthetic, tmp_path, 2)
    folder = root / paths[0]
    (folder / "img_00006.jpg").rename(folder / "img_00006.jpg.bak")  # the count stays 12
    for depth in ("none", "ends"):
        report = check_dataset(listing, root, depth=depth)
        assert [(p.kind, p.path) for p in report.problems] == [("missing", paths[0])]
        detail = report.problems[0].detail
        assert "1 of 12 listed frames" in detail
        assert str(folder) in detail
        assert detail.endswith(": img_00006.jpg")
        assert report.ok == 1 and report.frames == 24


def test_many_missing_frames_are_named_first_few_then_counted(tiny_synthetic, tmp_path) -> None:
    root, listing, paths = _copy_rawframes(tiny_synthetic, tmp_path, 1)
    folder = root / paths[0]
    for number in range(2, 10):  # frames 2..9 gone, 1 and 12 still open fine
        (folder / f"img_{number:05d}.jpg").unlink()
    report = check_dataset(listing, root, depth="all")
    assert sorted(p.kind for p in report.problems) == ["frame-count", "missing"]
    (missing,) = [p for p in report.problems if p.kind == "missing"]
    names = ", ".join(f"img_{n:05d}.jpg" for n in range(2, 7))
    assert missing.detail == f"8 of 12 listed frames not in {folder}: {names} and 3 more"


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


def test_a_frame_of_another_size_is_found_and_is_what_training_skips(
    tiny_synthetic, tmp_path
) -> None:
    from PIL import Image

    from s4v_data.decode import DecodeError, decode_rawframes
    from s4v_data.sampling import ClipPlan

    root, listing, paths = _copy_rawframes(tiny_synthetic, tmp_path, 2)
    folder = root / paths[0]
    with Image.open(folder / "img_00001.jpg") as image:
        width, height = image.size
    Image.new("RGB", (width + 8, height)).save(folder / "img_00006.jpg")
    report = check_dataset(listing, root, depth="all")
    assert [(p.kind, p.path) for p in report.problems] == [("frame-size", paths[0])]
    assert report.problems[0].detail.startswith(
        f"img_00006.jpg is {width + 8}x{height} but img_00001.jpg is {width}x{height}"
    )
    assert report.ok == 1
    assert check_dataset(listing, root, depth="ends").problems == []  # frame 6 is not opened
    plan = ClipPlan(family="sth", mode="test", num_frames=12)
    with pytest.raises(DecodeError, match="frames differ in size"):
        decode_rawframes(folder, plan, "img_{:05d}.jpg")
