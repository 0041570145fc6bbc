"""Annotation lists from the wild: a bad first line, an empty list, a BOM, another encoding."""

from __future__ import annotations

import pytest

from s4v_data.annotations import AnnotationError, read_labels, read_list
from s4v_data.check import check_dataset


def test_a_bad_first_line_is_the_one_blamed(tmp_path) -> None:
    path = tmp_path / "train.txt"
    path.write_text("a/b 0\nc/d 12 1\ne/f 12 2\n")  # line 1 lacks its frame count
    with pytest.raises(AnnotationError, match=r"train\.txt:1: expected 3 fields"):
        read_list(path)


def test_an_empty_list_fails_the_check(tmp_path) -> None:
    path = tmp_path / "val.txt"
    path.write_text("\n  \n")
    with pytest.raises(AnnotationError, match=r"val\.txt: the list is empty"):
        check_dataset(path, tmp_path)


def test_a_bom_is_read_and_another_encoding_is_named(tmp_path) -> None:
    lst, labels = tmp_path / "train.txt", tmp_path / "labels.csv"
    lst.write_bytes("\ufeffa/b 12 0\n".encode())
    labels.write_bytes("\ufeffid,name\n0,café\n".encode())
    assert read_list(lst)[0].path == "a/b"
    assert read_labels(labels) == ["café"]
    labels.write_bytes("id,name\n0,café\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"labels\.csv: not UTF-8 text"):
        read_labels(labels)
    lst.write_bytes("café/b 12 0\n".encode("latin-1"))
    with pytest.raises(AnnotationError, match=r"train\.txt: not UTF-8 text"):
        read_list(lst)
