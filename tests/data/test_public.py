"""UCF101, HMDB51 and Kinetics read from excerpts of their official split files, as distributed."""

from __future__ import annotations

from pathlib import Path

import pytest

from s4v_data.annotations import AnnotationError
from s4v_data.public import read_hmdb51, read_kinetics, read_ucf101
from s4v_data.specs import DATASETS

UCF_CLASSES = ("ApplyEyeMakeup", "Archery", "HandstandPushups")


def _ucf101(root: Path) -> Path:
    """classInd.txt and split-1/2 lists in the official format (CRLF line ends, as shipped).

    Split 1: groups 8-25 train, 1-7 test; 2 clips per group -> 36 train and 14 test videos per
    class. Split 2 holds one class less in training.
    """
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text(
        "".join(f"{i} {name}\r\n" for i, name in enumerate(UCF_CLASSES, start=1))
    )
    train, test = [], []
    for label, name in enumerate(UCF_CLASSES, start=1):
        file_stem = "HandStandPushups" if name == "HandstandPushups" else name  # as shipped
        for group in range(1, 26):
            for clip in (1, 2):
                video = f"{name}/v_{file_stem}_g{group:02d}_c{clip:02d}.avi"
                (train if group >= 8 else test).append((video, label))
    (lists / "trainlist01.txt").write_text("".join(f"{v} {lab}\r\n" for v, lab in train))
    (lists / "testlist01.txt").write_text("".join(f"{v}\r\n" for v, _ in test))
    (lists / "trainlist02.txt").write_text("".join(f"{v} {lab}\r\n" for v, lab in train[50:]))
    (lists / "testlist02.txt").write_text("".join(f"{v}\r\n" for v, _ in test))
    (root / "UCF-101").mkdir()
    return root


def test_ucf101_split_files_give_the_counts_and_labels_of_the_excerpt(tmp_path) -> None:
    root = _ucf101(tmp_path)
    train = read_ucf101(root, "train", 1)
    test = read_ucf101(root, "test", 1)
    assert train.class_names == list(UCF_CLASSES)
    assert (len(train.records), len(test.records)) == (3 * 36, 3 * 14)
    assert [sum(r.label == c for r in test.records) for c in range(3)] == [14, 14, 14]
    assert train.records[0].path == "UCF-101/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"
    assert test.records[-1].path == "UCF-101/HandstandPushups/v_HandStandPushups_g07_c02.avi"
    assert read_ucf101(root, "val", 1).records == test.records  # no validation split
    assert len(read_ucf101(root, "train", 2).records) == 3 * 36 - 50
    with pytest.raises(FileNotFoundError, match=r"trainlist03\.txt"):
        read_ucf101(root, "train", 3)
    with pytest.raises(AnnotationError, match="splits 1, 2 and 3"):
        read_ucf101(root, "train", 4)


def test_ucf101_label_that_disagrees_with_classind_is_refused(tmp_path) -> None:
    root = _ucf101(tmp_path)
    path = root / "ucfTrainTestlist" / "trainlist01.txt"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 2"
    path.write_text("\n".join(lines))
    with pytest.raises(AnnotationError, match=r"trainlist01.txt:4: class id 2 but classInd"):
        read_ucf101(root, "train", 1)


def _hmdb51(root: Path, classes: tuple[str, ...]) -> Path:
    """Per-class ``<class>_test_split<N>.txt`` files: 70 videos marked 1, 30 marked 2, 5 marked 0,
    interleaved as in the release (space before the line end, as shipped)."""
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True)
    for name in classes:
        for split in (1, 2, 3):
            marks = ["1"] * 70 + ["2"] * 30 + ["0"] * 5
            shift = split * 7  # each split marks other videos
            marks = marks[shift:] + marks[:shift]
            lines = [f"{name}_clip_{i:03d}.avi {mark} \n" for i, mark in enumerate(marks)]
            (lists / f"{name}_test_split{split}.txt").write_text("".join(lines))
    return root


def test_hmdb51_split_files_give_70_train_and_30_test_videos_per_class(tmp_path) -> None:
    root = _hmdb51(tmp_path, ("wave", "brush_hair", "clap"))
    for split in (1, 2, 3):
        train, test = read_hmdb51(root, "train", split), read_hmdb51(root, "test", split)
        assert train.class_names == ["brush_hair", "clap", "wave"]  # sorted, as MMAction2
        for label in range(3):
            assert sum(r.label == label for r in train.records) == 70
            assert sum(r.label == label for r in test.records) == 30
        assert not {r.path for r in train.records} & {r.path for r in test.records}
    first = read_hmdb51(root, "train", 1).records[0]
    assert first.path == "videos/brush_hair/brush_hair_clip_000.avi" and first.label == 0
    assert read_hmdb51(root, "train", 1).records != read_hmdb51(root, "train", 2).records


def test_hmdb51_unknown_mark_names_the_file_and_line(tmp_path) -> None:
    root = _hmdb51(tmp_path, ("wave",))
    path = root / "testTrainMulti_7030_splits" / "wave_test_split1.txt"
    path.write_text(path.read_text().replace(" 2 \n", " 3 \n", 1))
    with pytest.raises(AnnotationError, match=r"wave_test_split1.txt:\d+: expected"):
        read_hmdb51(root, "test", 1)


KINETICS_TRAIN = """\
label,youtube_id,time_start,time_end,split,is_cc
abseiling,--07WQ2iBlw,1,11,train,0
air drumming,-0kXFkTx9PE,25,35,train,0
abseiling,-3B32lodo2M,59,69,train,0
"""
KINETICS_VAL = """\
label,youtube_id,time_start,time_end,split
air drumming,--nQbRBEz2s,104.0,114.0,val
"""


@pytest.mark.parametrize("class_folders", [False, True])
def test_kinetics_csv_maps_rows_to_the_downloaders_file_names(tmp_path, class_folders) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text(KINETICS_TRAIN)
    (tmp_path / "annotations" / "val.csv").write_text(KINETICS_VAL)
    if class_folders:  # e.g. the ActivityNet crawler: <split>/<label with _ for spaces>/
        (tmp_path / "train" / "abseiling").mkdir(parents=True)
        (tmp_path / "train" / "air_drumming").mkdir(parents=True)
    train = read_kinetics(tmp_path, "train")
    val = read_kinetics(tmp_path, "val")
    assert train.class_names == ["abseiling", "air drumming"]
    expected = ["--07WQ2iBlw_000001_000011.mp4", "-0kXFkTx9PE_000025_000035.mp4"]
    if class_folders:
        expected = ["abseiling/" + expected[0], "air_drumming/" + expected[1]]
    assert [r.path for r in train.records[:2]] == ["train/" + e for e in expected]
    assert [r.label for r in train.records] == [0, 1, 0]
    assert [(r.path, r.label) for r in val.records] == [("val/--nQbRBEz2s_000104_000114.mp4", 1)]


def test_kinetics_csv_without_the_official_header_is_refused(tmp_path) -> None:
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "train.csv").write_text("path,label\na.mp4,0\n")
    with pytest.raises(
        AnnotationError, match=r"train\.csv:1: expected the header label,youtube_id"
    ):
        read_kinetics(tmp_path, "train")


def test_the_public_sets_are_registered_with_their_readers() -> None:
    assert DATASETS["ucf101"].num_classes == 101 and DATASETS["ucf101"].official is read_ucf101
    assert DATASETS["hmdb51"].num_classes == 51 and DATASETS["hmdb51"].official is read_hmdb51
    assert DATASETS["k400"].official is read_kinetics
