"""dataset.yaml: a user's dataset in one validated file; every error names the file, line, field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from s4v_data.annotations import AnnotationError, write_labels
from s4v_data.dataset_file import (
    DatasetFileError,
    is_dataset_file,
    read_captions,
    read_dataset_file,
)
from s4v_data.specs import DATASETS

GOOD = """\
name: kitchen
lists:
  train: lists/train.txt
  val: lists/val.txt
labels: labels.csv
num_classes: 3
flip_swap: {1: 2}
"""


def _write(folder: Path, text: str, labels: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_labels(folder / "labels.csv", [f"class {i}" for i in range(labels)])
    path = folder / "dataset.yaml"
    path.write_text(text)
    return path


def test_paths_resolve_against_the_files_folder_and_the_spec_follows_the_recipe(tmp_path) -> None:
    dataset = read_dataset_file(_write(tmp_path / "data", GOOD))
    folder = (tmp_path / "data").resolve()
    assert dataset.root == folder
    assert dataset.lists.train == folder / "lists/train.txt"
    assert dataset.split_list("test") == folder / "lists/val.txt"  # no test list: val
    spec = dataset.spec()
    kinetics = DATASETS["k400"]
    assert (spec.name, spec.num_classes, spec.sampling) == ("kitchen", 3, kinetics.sampling)
    assert (spec.resize, spec.grayscale_p) == (kinetics.resize, kinetics.grayscale_p)
    assert spec.flip == "swap-labels" and spec.flip_label_map() == {1: 2, 2: 1}

    motion = GOOD.replace("flip_swap: {1: 2}", "flip: false\nrecipe: motion\nroot: /videos")
    spec = read_dataset_file(_write(tmp_path / "motion", motion)).spec()
    assert spec.sampling == DATASETS["ssv2"].sampling and spec.resize == "exact"
    assert spec.flip == "none" and spec.rand_augment
    assert read_dataset_file(tmp_path / "motion" / "dataset.yaml").root == Path("/videos")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("num_classes: 3", "num_clases: 3"), ":6: num_clases: unknown field"),
        (("num_classes: 3", "num_classes: 0"), ":6: num_classes: Input should be greater than 0"),
        (("num_classes: 3", "num_classes: 4"), ":6: num_classes: 4 but"),
        (("  val: lists/val.txt\n", ""), ":2: lists.val: Field required"),
        (("labels: labels.csv\n", ""), ": labels: required for a recognition dataset"),
        (("{1: 2}", "{1: 2, 2: 0}"), ":7: flip_swap: 1: 2 is not a swap of two classes"),
        (("{1: 2}", "{1: 5}"), ":7: flip_swap: 1: 5 names a class outside 0..num_classes-1"),
        (("name: kitchen", "name: ssv2"), ":1: name: 'ssv2' is a registered dataset"),
        (("name: kitchen", "name: my data"), ":1: name: String should match pattern"),
        (("labels: labels.csv", "labels: labels.csv\nlabels: other.csv"), ":6: labels repeats"),
    ],
)
def test_every_error_names_the_file_line_and_field(tmp_path, change, expected) -> None:
    path = _write(tmp_path, GOOD.replace(*change))
    with pytest.raises(DatasetFileError) as err:
        read_dataset_file(path)
    assert f"{path.resolve()}{expected}" in str(err.value), str(err.value)


def test_a_missing_or_malformed_file_is_a_clear_error(tmp_path) -> None:
    with pytest.raises(DatasetFileError, match="dataset file not found"):
        read_dataset_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(DatasetFileError, match="not valid YAML"):
        read_dataset_file(bad)


def test_dataset_files_are_told_from_registered_names() -> None:
    assert is_dataset_file("data/dataset.yaml") and is_dataset_file("mine.yml")
    assert not is_dataset_file("ucf101") and not is_dataset_file("synthetic")


def test_captions_come_from_csv_or_json_with_one_or_several_per_video(tmp_path) -> None:
    csv_file = tmp_path / "captions.csv"
    csv_file.write_text("video,caption\na.mp4,a dog runs\nb.mp4,a cat sleeps\na.mp4,a dog plays\n")
    expected = {"a.mp4": ["a dog runs", "a dog plays"], "b.mp4": ["a cat sleeps"]}
    assert read_captions(csv_file) == expected
    as_dict = tmp_path / "dict.json"
    as_dict.write_text(
        json.dumps({"a.mp4": ["a dog runs", "a dog plays"], "b.mp4": "a cat sleeps"})
    )
    assert read_captions(as_dict) == expected
    as_rows = tmp_path / "rows.json"
    rows = [{"video": v, "caption": c} for v, caps in expected.items() for c in caps]
    as_rows.write_text(json.dumps(rows))
    assert read_captions(as_rows) == expected
    bad = tmp_path / "bad.csv"
    bad.write_text("id,text\na,b\n")
    with pytest.raises(AnnotationError, match=r"bad\.csv:1: expected the header .video,caption."):
        read_captions(bad)


def test_a_retrieval_dataset_reads_its_splits_with_their_captions(tmp_path) -> None:
    (tmp_path / "captions.csv").write_text("video,caption\na.mp4,one\nb.mp4,two\nb.mp4,three\n")
    (tmp_path / "train.txt").write_text("a.mp4\n")
    (tmp_path / "test.txt").write_text("b.mp4\n")
    path = tmp_path / "dataset.yaml"
    path.write_text(
        "name: clips\ntask: retrieval\ncaptions: captions.csv\n"
        "lists: {train: train.txt, val: test.txt}\n"
    )
    dataset = read_dataset_file(path)
    test = dataset.layout().read(tmp_path, "test")
    assert test.video_ids == ("b.mp4",) and test.captions == (("two", "three"),)
    (tmp_path / "train.txt").write_text("a.mp4\nc.mp4\n")
    with pytest.raises(AnnotationError, match=r"train.txt:2: video 'c.mp4' has no caption"):
        dataset.read_split("train")
