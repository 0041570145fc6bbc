"""Annotation lists and label files: good lines parse, bad lines fail naming file and line."""

from __future__ import annotations

import pytest

from s4v_data import (
    AnnotationError,
    VideoRecord,
    check_labels,
    read_labels,
    read_list,
    read_rawframe_list,
    read_video_list,
    write_labels,
    write_rawframe_list,
    write_video_list,
)


def test_rawframe_list_parses_reference_examples(tmp_path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("100218 42 134\n\nabseiling/-7kbO0v4hag_000107_000117 300 0\n")
    assert read_rawframe_list(path) == [
        VideoRecord(path="100218", num_frames=42, label=134),
        VideoRecord(path="abseiling/-7kbO0v4hag_000107_000117", num_frames=300, label=0),
    ]


def test_video_list_parses_reference_example(tmp_path) -> None:
    path = tmp_path / "val.txt"
    path.write_text("abseiling/-7kbO0v4hag_000107_000117.mp4 0\n")
    assert read_video_list(path) == [
        VideoRecord(path="abseiling/-7kbO0v4hag_000107_000117.mp4", label=0)
    ]


def test_read_list_detects_the_format_from_the_first_line(tmp_path) -> None:
    (tmp_path / "r.txt").write_text("a 3 1\n")
    (tmp_path / "v.txt").write_text("a.mp4 1\n")
    assert read_list(tmp_path / "r.txt")[0].num_frames == 3
    assert read_list(tmp_path / "v.txt")[0].num_frames is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a 3 1\nb 4\n", "list.txt:2: expected 3 fields"),
        ("a 3 1\n\nb x 2\n", "list.txt:3: num_frames 'x' is not an integer"),
        ("a 3 -1\n", "list.txt:1: label -1 is negative"),
        ("a 3 1 extra\n", "list.txt:1: expected 3 fields"),
    ],
)
def test_malformed_rawframe_line_names_file_and_line(tmp_path, text, message) -> None:
    path = tmp_path / "list.txt"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_rawframe_list(path)


def test_malformed_video_line_names_file_and_line(tmp_path) -> None:
    path = tmp_path / "videos.txt"
    path.write_text("a.mp4 1\nb.mp4 one\n")
    with pytest.raises(AnnotationError, match=r"videos\.txt:2: label 'one' is not an integer"):
        read_video_list(path)


def test_missing_list_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.txt"):
        read_rawframe_list(tmp_path / "nope.txt")


def test_labels_round_trip(tmp_path) -> None:
    names = ["Pulling something from left to right", "a, b with comma"]
    write_labels(tmp_path / "labels.csv", names)
    assert read_labels(tmp_path / "labels.csv") == names


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name,id\n0,a\n", "labels.csv:1: expected the header 'id,name'"),
        ("id,name\n0,a\n2,b\n", "labels.csv:3: expected id 1"),
        ("id,name\n0,a\nx,b\n", "labels.csv:3: id 'x' is not an integer"),
        ("id,name\n", "no classes"),
    ],
)
def test_bad_label_file_names_file_and_line(tmp_path, text, message) -> None:
    path = tmp_path / "labels.csv"
    path.write_text(text)
    with pytest.raises(AnnotationError, match=message):
        read_labels(path)


def test_labels_outside_the_label_file_fail_with_examples() -> None:
    records = [VideoRecord(path="a", label=0), VideoRecord(path="b", label=5)]
    check_labels(records, 6, "list.txt")
    with pytest.raises(AnnotationError, match=r"list.txt: 1 of 2 .* outside 0..4 .* b \(label 5\)"):
        check_labels(records, 5, "list.txt")


def test_lists_round_trip(tmp_path) -> None:
    records = [VideoRecord(path="x/y", num_frames=7, label=2)]
    write_rawframe_list(tmp_path / "r.txt", records)
    assert read_rawframe_list(tmp_path / "r.txt") == records
    videos = [VideoRecord(path="x/y.mp4", label=2)]
    write_video_list(tmp_path / "v.txt", videos)
    assert read_video_list(tmp_path / "v.txt") == videos
