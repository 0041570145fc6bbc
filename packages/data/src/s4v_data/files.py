"""Where a recognition dataset's files are, and a clear error when they are not there.

A dataset is its lists (training, validation, test) and label file under a root, named by its
:class:`~s4v_data.specs.DatasetSpec` unless given explicitly, or its official split files (UCF101,
HMDB51, Kinetics videos; :mod:`s4v_data.public`). :func:`data_files` resolves the paths,
:func:`check_data_files` fails before anything is built when one is missing, and
:func:`read_official` reads one official split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from s4v_data.public import SplitRecords
from s4v_data.specs import DatasetSpec


class DataError(RuntimeError):
    """The data cannot serve this run; the message says what is wrong and what to do."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A real dataset's files are missing; the message says what was looked for and what to do."""


@dataclass(frozen=True, kw_only=True, slots=True)
class DataFiles:
    """The files of one recognition dataset."""

    dataset: str  # its name, for messages
    root: Path
    train_list: Path
    val_list: Path
    test_list: Path  # the validation list unless a test list is given
    labels: Path
    # Reads the dataset's official split files instead of the lists (UCF101, HMDB51, Kinetics
    # videos): (root, split, split number) -> records and class names.
    official: Callable[[Path, str, int], SplitRecords] | None = None
    split: int = 1  # which official split (UCF101 and HMDB51 have three)
    described_by: Path | None = None  # the dataset.yaml that names these files, if one does


def data_files(
    spec: DatasetSpec,
    root: str | Path,
    *,
    name: str | None = None,
    source: Literal["rawframes", "video"] = "rawframes",
    train_list: str | None = None,
    val_list: str | None = None,
    test_list: str | None = None,
    labels: str | None = None,
    split: int = 1,
    described_by: Path | None = None,
) -> DataFiles:
    """The files of ``spec``'s dataset under ``root``: the given names, or the spec's defaults.

    The official split files serve videos unless lists are given or the default lists exist.
    """
    root = Path(root)
    videos = source == "video"
    train = root / (train_list or (spec.train_video_list if videos else spec.train_list))
    val = root / (val_list or (spec.val_video_list if videos else spec.val_list))
    lists_given = train_list is not None or val_list is not None
    official = spec.official if videos and not lists_given and not train.is_file() else None
    return DataFiles(
        dataset=name or spec.name,
        root=root,
        train_list=train,
        val_list=val,
        test_list=root / test_list if test_list else val,
        labels=root / (labels or spec.label_file),
        official=official,
        split=split,
        described_by=described_by,
    )


def read_official(files: DataFiles, split: str) -> SplitRecords:
    """One split (``train``, ``val`` or ``test``) from the dataset's official split files.

    Raises:
        DataError: the dataset has no official split files.
        DataNotFoundError: naming the file that is missing.
    """
    if files.official is None:
        raise DataError(f"the {files.dataset} dataset has no official split files")
    try:
        return files.official(files.root, split, files.split)
    except FileNotFoundError as err:
        raise DataNotFoundError(
            f"the {files.dataset} dataset is not prepared under {files.root}: {err}.\n"
            "Unpack its videos and official split files there (see the README's section on "
            "public datasets), or point --data-root at the folder that holds them."
        ) from None


def check_data_files(files: DataFiles, *, need_train: bool = True) -> None:
    """Fail at once, before any model is built, when a real dataset is not prepared.

    Raises:
        DataNotFoundError: listing every missing file and what to do.
    """
    if files.official is not None:
        for split in ("train", "test") if need_train else ("test",):
            read_official(files, split)
        return
    wanted = {"validation list": files.val_list, "label file": files.labels}
    if need_train:
        wanted = {"training list": files.train_list, **wanted}
    if files.test_list != files.val_list:
        wanted["test list"] = files.test_list
    missing = [f"{what} {path}" for what, path in wanted.items() if not path.is_file()]
    if missing and files.described_by is not None:
        raise DataNotFoundError(
            f"{files.described_by} names files that are not there: "
            + "; ".join(missing)
            + ".\nFix the paths in the dataset file (relative paths start at its folder), or "
            "write it again with `s4v data prepare`."
        )
    if missing:
        raise DataNotFoundError(
            f"the {files.dataset} dataset is not prepared under {files.root}: missing "
            + "; ".join(missing)
            + ".\nPrepare it with `s4v data extract` (see `s4v data --help`), or point "
            "--data-root at the folder that holds it. For a self-contained run that needs no "
            "download, use --dataset synthetic."
        )
