"""Annotation lists and label files in the formats the video-recognition field uses.

* Rawframe list: one video per line, ``relative_frame_dir num_frames label`` (space separated), e.g.
  ``abseiling/-7kbO0v4hag_000107_000117 300 0``.
* Video list: ``relative_video_path label``, e.g. ``abseiling/-7kbO0v4hag_000107_000117.mp4 0``.
* Label file: CSV with a header ``id,name`` and one row per class, ids ``0..K-1`` in order.

Every parse error names the file and the 1-based line number.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "AnnotationError",
    "VideoRecord",
    "check_labels",
    "read_labels",
    "read_list",
    "read_rawframe_list",
    "read_video_list",
    "write_labels",
    "write_rawframe_list",
    "write_video_list",
]


class AnnotationError(ValueError):
    """A list or label file is malformed; the message names the file and the line."""


@dataclass(frozen=True, kw_only=True, slots=True)
class VideoRecord:
    """One line of an annotation list."""

    path: str  # relative frame folder (rawframes) or relative video file (videos)
    label: int
    num_frames: int | None = None  # from a rawframe list; None for a video list


def _split_lines(path: Path) -> Iterable[tuple[int, list[str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"annotation list {path} does not exist")
    for lineno, line in enumerate(_text(path).splitlines(), start=1):
        fields = line.split()
        if fields:  # blank lines are allowed (trailing newlines in the wild)
            yield lineno, fields


def _text(path: Path) -> str:
    """The file as UTF-8 text, a byte-order mark (as some editors write) dropped."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise AnnotationError(
            f"{path}: not UTF-8 text (byte {err.start} cannot be decoded); save it as UTF-8"
        ) from None


def _parse_int(text: str, what: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise AnnotationError(f"{where}: {what} {text!r} is not an integer") from None
    if value < 0:
        raise AnnotationError(f"{where}: {what} {value} is negative")
    return value


def read_rawframe_list(path: str | Path) -> list[VideoRecord]:
    """Parse a rawframe list (``relative_frame_dir num_frames label`` per line)."""
    path = Path(path)
    records = []
    for lineno, fields in _split_lines(path):
        where = f"{path}:{lineno}"
        if len(fields) != 3:
            raise AnnotationError(
                f"{where}: expected 3 fields 'frame_dir num_frames label', got {len(fields)}: "
                f"{' '.join(fields)!r}"
            )
        num_frames = _parse_int(fields[1], "num_frames", where)
        label = _parse_int(fields[2], "label", where)
        records.append(VideoRecord(path=fields[0], num_frames=num_frames, label=label))
    return records


def read_video_list(path: str | Path) -> list[VideoRecord]:
    """Parse a video list (``relative_video_path label`` per line)."""
    path = Path(path)
    records = []
    for lineno, fields in _split_lines(path):
        where = f"{path}:{lineno}"
        if len(fields) != 2:
            raise AnnotationError(
                f"{where}: expected 2 fields 'video_path label', got {len(fields)}: "
                f"{' '.join(fields)!r}"
            )
        records.append(VideoRecord(path=fields[0], label=_parse_int(fields[1], "label", where)))
    return records


def read_list(path: str | Path) -> list[VideoRecord]:
    """Parse either list format, decided by the number of fields most lines have (so that a
    malformed line is blamed, even the first)."""
    path = Path(path)
    counts = [len(fields) for _, fields in _split_lines(path)]
    if not counts:
        return []
    rawframes = sum(n == 3 for n in counts) > sum(n == 2 for n in counts)
    if sum(n == 3 for n in counts) == sum(n == 2 for n in counts):
        rawframes = counts[0] == 3
    return read_rawframe_list(path) if rawframes else read_video_list(path)


def read_labels(path: str | Path) -> list[str]:
    """Read a label CSV (``id,name`` header, ids ``0..K-1`` in order) and return the names."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label file {path} does not exist")
    rows = list(csv.reader(io.StringIO(_text(path), newline="")))
    if not rows or [c.strip().lower() for c in rows[0]] != ["id", "name"]:
        raise AnnotationError(f"{path}:1: expected the header 'id,name'")
    names = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        where = f"{path}:{lineno}"
        if len(row) != 2:
            raise AnnotationError(f"{where}: expected 2 fields 'id,name', got {len(row)}")
        class_id = _parse_int(row[0].strip(), "id", where)
        if class_id != len(names):
            raise AnnotationError(f"{where}: expected id {len(names)} (ids run 0..K-1 in order)")
        names.append(row[1].strip())
    if not names:
        raise AnnotationError(f"{path}: no classes")
    return names


def check_labels(records: Sequence[VideoRecord], num_classes: int, source: str | Path) -> None:
    """Fail with a clear message if any label is outside ``0..num_classes-1``."""
    bad = [r for r in records if not 0 <= r.label < num_classes]
    if bad:
        examples = ", ".join(f"{r.path} (label {r.label})" for r in bad[:3])
        raise AnnotationError(
            f"{source}: {len(bad)} of {len(records)} entries have a label outside "
            f"0..{num_classes - 1} of the label file, e.g. {examples}"
        )


def write_rawframe_list(path: str | Path, records: Iterable[VideoRecord]) -> None:
    """Write a rawframe list; every record needs ``num_frames``."""
    lines = []
    for r in records:
        if r.num_frames is None:
            raise ValueError(f"{r.path}: a rawframe list needs num_frames")
        lines.append(f"{r.path} {r.num_frames} {r.label}\n")
    Path(path).write_text("".join(lines), encoding="utf-8")


def write_video_list(path: str | Path, records: Iterable[VideoRecord]) -> None:
    """Write a video list."""
    Path(path).write_text("".join(f"{r.path} {r.label}\n" for r in records), encoding="utf-8")


def write_labels(path: str | Path, names: Sequence[str]) -> None:
    """Write a label CSV with the header ``id,name``."""
    with Path(path).open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "name"])
        writer.writerows(enumerate(names))
