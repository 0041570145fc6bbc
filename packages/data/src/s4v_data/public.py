"""The official split files of the small public datasets, read as distributed.

* **UCF101** (crcv.ucf.edu/data/UCF101.php): ``UCF101TrainTestSplits-RecognitionTask.zip`` unpacks
  to ``ucfTrainTestlist/`` with ``classInd.txt`` (``1 ApplyEyeMakeup``: 1-based id and name),
  ``trainlist0N.txt`` (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1``: video and 1-based id) and
  ``testlist0N.txt`` (``ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi``: the class is the folder);
  ``UCF101.rar`` unpacks to ``UCF-101/<class>/<video>.avi``. Three splits; split 1 has 9537
  training and 3783 test videos (split 2: 9586 / 3734, split 3: 9624 / 3696), 101 classes.
* **HMDB51** (serre-lab.clps.brown.edu/resource/hmdb-a-large-human-motion-database):
  ``test_train_splits.rar`` unpacks to ``testTrainMulti_7030_splits/`` with one
  ``<class>_test_split<N>.txt`` per class and split, a line ``<video>.avi <mark>`` per video of
  the class, mark 1 = training, 2 = test, 0 = not used; every class has 70 training and 30 test
  videos in every split (3570 / 1530 over the 51 classes). Class ids follow the sorted class names
  (as MMAction2's lists); the videos are under ``videos/<class>/`` (or ``hmdb51_org/<class>/``).
* **Kinetics** (github.com/cvdfoundation/kinetics-dataset): ``annotations/{train,val}.csv`` with the
  header ``label,youtube_id,time_start,time_end,split`` (Kinetics-400 adds ``is_cc``); the
  downloaders write ``{youtube_id}_{start:06d}_{end:06d}.mp4`` into ``<split>/`` or into
  ``<split>/<label>/`` (both are recognised). Class ids follow the sorted names of the training CSV.

UCF101 and HMDB51 have no validation split: ``val`` and ``test`` are the official test list, as the
field reports them.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from s4v_data.annotations import AnnotationError, VideoRecord

__all__ = [
    "HMDB51_SPLIT_DIRS",
    "UCF101_SPLIT_DIRS",
    "SplitRecords",
    "kinetics_file_name",
    "read_hmdb51",
    "read_kinetics",
    "read_kinetics_csv",
    "read_ucf101",
]

# Where the annotations and videos are looked for under the data root, first match wins: the
# folder names of the official archives, then MMAction2's ``annotations`` / ``videos``.
UCF101_SPLIT_DIRS = ("ucfTrainTestlist", "annotations")
UCF101_VIDEO_DIRS = ("UCF-101", "videos")
HMDB51_SPLIT_DIRS = ("testTrainMulti_7030_splits", "annotations")
HMDB51_VIDEO_DIRS = ("videos", "hmdb51_org")
NUM_OFFICIAL_SPLITS = 3  # UCF101 and HMDB51 both define three train/test splits


@dataclass(frozen=True, kw_only=True, slots=True)
class SplitRecords:
    """The videos of one split and the class names their labels index."""

    records: list[VideoRecord]  # paths relative to the data root
    class_names: list[str]
    source: Path  # the file (or folder of files) the split came from, for messages


def _first_dir(root: Path, candidates: Sequence[str]) -> Path:
    for name in candidates:
        if (root / name).is_dir():
            return root / name
    return root / candidates[0]


def _check_split_number(number: int, dataset: str) -> None:
    if not 1 <= number <= NUM_OFFICIAL_SPLITS:
        raise AnnotationError(f"{dataset} has splits 1, 2 and 3, not data.split={number}")


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    text = path.read_text(encoding="utf-8-sig", errors="strict")
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


# --- UCF101 ----------------------------------------------------------------------------------------


def read_ucf101_classes(class_ind: Path) -> list[str]:
    """Class names in id order from ``classInd.txt`` (``<1-based id> <name>`` per line)."""
    names: list[str] = []
    for lineno, fields in _lines(class_ind):
        if len(fields) != 2 or not fields[0].isdigit():
            raise AnnotationError(f"{class_ind}:{lineno}: expected '<id> <class name>'")
        if int(fields[0]) != len(names) + 1:
            raise AnnotationError(f"{class_ind}:{lineno}: expected id {len(names) + 1}")
        names.append(fields[1])
    if not names:
        raise AnnotationError(f"{class_ind}: no classes")
    return names


def read_ucf101(root: Path, split: str, number: int = 1) -> SplitRecords:
    """UCF101's official ``split`` (train, or val/test = the test list) of split ``number``."""
    _check_split_number(number, "UCF101")
    lists = _first_dir(root, UCF101_SPLIT_DIRS)
    videos = _first_dir(root, UCF101_VIDEO_DIRS).relative_to(root)
    names = read_ucf101_classes(lists / "classInd.txt")
    ids = {name: index for index, name in enumerate(names)}
    kind = "train" if split == "train" else "test"
    path = lists / f"{kind}list{number:02d}.txt"
    records = []
    for lineno, fields in _lines(path):
        where = f"{path}:{lineno}"
        if len(fields) != (2 if kind == "train" else 1):
            shape = "'<class>/<video>.avi <id>'" if kind == "train" else "'<class>/<video>.avi'"
            raise AnnotationError(f"{where}: expected {shape}")
        video = fields[0]
        folder = video.split("/")[0]
        if folder not in ids:
            raise AnnotationError(f"{where}: class folder {folder!r} is not in classInd.txt")
        label = ids[folder]
        if kind == "train" and fields[1] != str(label + 1):
            raise AnnotationError(
                f"{where}: class id {fields[1]} but classInd.txt gives {folder} id {label + 1}"
            )
        records.append(VideoRecord(path=f"{videos}/{video}", label=label))
    if not records:
        raise AnnotationError(f"{path}: no videos")
    return SplitRecords(records=records, class_names=names, source=path)


# --- HMDB51 ----------------------------------------------------------------------------------------

_HMDB_MARKS = {"1": "train", "2": "test", "0": None}


def read_hmdb51(root: Path, split: str, number: int = 1) -> SplitRecords:
    """HMDB51's official ``split`` (train, or val/test = the test videos) of split ``number``."""
    _check_split_number(number, "HMDB51")
    lists = _first_dir(root, HMDB51_SPLIT_DIRS)
    videos = _first_dir(root, HMDB51_VIDEO_DIRS).relative_to(root)
    suffix = f"_test_split{number}.txt"
    files = sorted(lists.glob(f"*{suffix}")) if lists.is_dir() else []
    if not files:
        raise FileNotFoundError(f"{lists}: no per-class split files *{suffix}")
    names = [f.name.removesuffix(suffix) for f in files]
    kind = "train" if split == "train" else "test"
    records = []
    for label, (name, path) in enumerate(zip(names, files, strict=True)):
        for lineno, fields in _lines(path):
            if len(fields) != 2 or fields[1] not in _HMDB_MARKS:
                raise AnnotationError(f"{path}:{lineno}: expected '<video>.avi <0, 1 or 2>'")
            if _HMDB_MARKS[fields[1]] == kind:
                records.append(VideoRecord(path=f"{videos}/{name}/{fields[0]}", label=label))
    return SplitRecords(records=records, class_names=names, source=lists)


# --- Kinetics --------------------------------------------------------------------------------------

KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")


def kinetics_file_name(youtube_id: str, start: float, end: float) -> str:
    """The file name the Kinetics downloaders write: ``{id}_{start:06d}_{end:06d}.mp4``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}.mp4"


def _kinetics_rows(path: Path) -> list[tuple[int, dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in KINETICS_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(
                f"{path}:1: expected the header {','.join(KINETICS_COLUMNS)},split "
                f"(missing {', '.join(missing)})"
            )
        return [(reader.line_num, row) for row in reader]


def read_kinetics_csv(path: Path, video_dir: Path, class_names: Sequence[str]) -> list[VideoRecord]:
    """Records of an official Kinetics CSV; paths relative to ``video_dir``'s parent.

    The videos are ``video_dir/<file>`` or, when ``video_dir`` has a folder per class (named as the
    label, or with ``_`` for spaces), ``video_dir/<label>/<file>``.
    """
    ids = {name: index for index, name in enumerate(class_names)}
    rows = _kinetics_rows(path)
    folders: dict[str, str | None] = {}  # label -> its class folder, if the layout has them
    records = []
    for lineno, row in rows:
        where = f"{path}:{lineno}"
        label = row["label"].strip()
        if label not in ids:
            raise AnnotationError(f"{where}: class {label!r} is not a class of the training CSV")
        try:
            name = kinetics_file_name(
                row["youtube_id"].strip(), float(row["time_start"]), float(row["time_end"])
            )
        except (TypeError, ValueError):
            raise AnnotationError(f"{where}: time_start/time_end are not numbers") from None
        if label not in folders:
            candidates = (label, label.replace(" ", "_"))
            folders[label] = next((f for f in candidates if (video_dir / f).is_dir()), None)
        folder = folders[label]
        relative = f"{folder}/{name}" if folder else name
        records.append(VideoRecord(path=f"{video_dir.name}/{relative}", label=ids[label]))
    if not records:
        raise AnnotationError(f"{path}: no videos")
    return records


def read_kinetics(root: Path, split: str, number: int = 1) -> SplitRecords:
    """Kinetics ``split`` (train, val; test = val) from ``annotations/<split>.csv``."""
    del number  # Kinetics has one split
    name = "train" if split == "train" else "val"
    train_csv = root / "annotations" / "train.csv"
    class_names = sorted({row["label"].strip() for _, row in _kinetics_rows(train_csv)})
    path = root / "annotations" / f"{name}.csv"
    records = read_kinetics_csv(path, root / name, class_names)
    return SplitRecords(records=records, class_names=class_names, source=path)
