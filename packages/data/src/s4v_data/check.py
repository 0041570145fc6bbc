"""Dataset validation: missing folders or files, wrong frame counts, unreadable data, bad labels."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from s4v_data._helper import Helper, HelperDied, HelperError, HelperTimeout
from s4v_data.annotations import AnnotationError, VideoRecord, read_list
from s4v_data.extract import CACHE_FILE

__all__ = ["CheckReport", "Problem", "check_dataset"]

ProblemKind = Literal["missing", "frame-count", "unreadable", "frame-size", "label"]
Depth = Literal["none", "ends", "all"]


@dataclass(frozen=True, kw_only=True, slots=True)
class Problem:
    """One thing wrong with one entry of the list."""

    kind: ProblemKind
    path: str  # as in the list
    detail: str


@dataclass(kw_only=True, slots=True)
class CheckReport:
    """What :func:`check_dataset` found."""

    list_file: Path
    source: Literal["rawframes", "video"]
    entries: int = 0
    frames: int = 0  # frames counted in the folders, or decoded frame counts of the videos
    problems: list[Problem] = field(default_factory=list)
    extraction: dict | None = None  # the cache metadata of the root, if it has one

    @property
    def ok(self) -> int:
        """Entries without any problem."""
        return self.entries - len({p.path for p in self.problems})

    def count(self, kind: ProblemKind) -> int:
        """Problems of one kind."""
        return sum(p.kind == kind for p in self.problems)


MISSING_LISTED = 5  # missing frame names quoted per folder; the rest are counted


def _check_rawframes(
    record: VideoRecord, root: Path, template: str, depth: Depth
) -> tuple[int, list[Problem]]:
    """One listing of the folder: every listed frame name must be there, and the count must match.

    ``record.num_frames`` frames are expected, named ``template.format(1 .. num_frames)``. A
    missing name is a ``missing`` problem even when stray files keep the count right; then the
    first and last listed frames (``ends``) or all of them (``all``) are opened, skipping missing
    ones. A frame whose size differs from the first opened one is a ``frame-size`` problem:
    training cannot stack such a clip and skips the video.
    """
    folder = root / record.path
    if not folder.is_dir():
        return 0, [Problem(kind="missing", path=record.path, detail=f"no folder {folder}")]
    present = set(os.listdir(folder))
    found = len(present)
    listed = record.num_frames or 0
    problems = []
    missing = [n for n in range(1, listed + 1) if template.format(n) not in present]
    if missing:
        names = ", ".join(template.format(n) for n in missing[:MISSING_LISTED])
        more = f" and {len(missing) - MISSING_LISTED} more" if len(missing) > MISSING_LISTED else ""
        problems.append(
            Problem(
                kind="missing",
                path=record.path,
                detail=f"{len(missing)} of {listed} listed frames not in {folder}: {names}{more}",
            )
        )
    if found != listed:
        problems.append(
            Problem(
                kind="frame-count",
                path=record.path,
                detail=f"the list says {listed} frames, the folder holds {found}",
            )
        )
    numbers = {"none": [], "ends": sorted({1, listed}), "all": range(1, listed + 1)}[depth]
    skip = set(missing)
    first: tuple[str, tuple[int, int]] | None = None  # the first opened frame's name and size
    for number in numbers if listed else []:
        if number in skip:
            continue
        name = template.format(number)
        size, error = _open_image(folder / name)
        if error:
            problems.append(Problem(kind="unreadable", path=record.path, detail=f"{name}: {error}"))
            break
        if first is None:
            first = (name, size)
        elif size != first[1]:
            detail = (
                f"{name} is {_wxh(size)} but {first[0]} is {_wxh(first[1])}; "
                "training skips a video whose frames differ in size"
            )
            problems.append(Problem(kind="frame-size", path=record.path, detail=detail))
            break
    return found, problems


def _wxh(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def _open_image(path: Path) -> tuple[tuple[int, int], str | None]:
    """The decoded image's (width, height), and why it could not be decoded (None if it could)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.load()
            return image.size, None
    except OSError as e:
        return (0, 0), str(e) or type(e).__name__


def _check_video(
    record: VideoRecord, root: Path, depth: Depth, helper: Helper, timeout: float
) -> tuple[int, list[Problem]]:
    path = root / record.path
    if not path.is_file():
        return 0, [Problem(kind="missing", path=record.path, detail=f"no file {path}")]
    if depth == "none":
        return 0, []
    try:
        n = helper.request(("open", str(path), 1, None), timeout)  # None: the default decoder
        if n < 1:
            raise HelperError("the video has no frames")
        indices = sorted({0, n - 1}) if depth == "ends" else list(range(n))
        helper.request(("get", indices), timeout)
    except HelperTimeout:
        detail = f"decoding timed out after {timeout:g} s"
        return 0, [Problem(kind="unreadable", path=record.path, detail=detail)]
    except (HelperDied, HelperError) as e:
        return 0, [Problem(kind="unreadable", path=record.path, detail=str(e))]
    return n, []


def check_dataset(
    list_file: str | Path,
    root: str | Path,
    *,
    frame_template: str = "img_{:05d}.jpg",
    num_classes: int | None = None,
    depth: Depth = "ends",
    timeout: float = 60.0,
    on_entry: Callable[[int, int], None] | None = None,
) -> CheckReport:
    """Validate every entry of a rawframe or video list against the files under ``root``.

    Args:
        list_file: rawframe list (``dir num_frames label``) or video list (``path label``).
        root: folder the list's paths are relative to.
        frame_template: frame file names (rawframes).
        num_classes: labels must lie in ``0..num_classes-1`` (None: not checked).
        depth: what to decode: ``"none"``, the first and last frame (``"ends"``), or ``"all"``.
            Videos are decoded in a helper process with ``timeout`` seconds per request. At every
            depth a rawframe folder is listed once and each listed frame name must be in it (a
            ``missing`` problem names the first few absent), besides its file count matching.
        on_entry: called as ``on_entry(done, total)`` after each entry (progress bars).

    Returns:
        A :class:`CheckReport`; a malformed list raises ``AnnotationError`` naming the line.
    """
    list_file, root = Path(list_file), Path(root)
    records = read_list(list_file)
    if not records:
        raise AnnotationError(f"{list_file}: the list is empty (no entry to train or evaluate on)")
    source = "video" if records and records[0].num_frames is None else "rawframes"
    report = CheckReport(list_file=list_file, source=source, entries=len(records))
    cache = root / CACHE_FILE
    if cache.is_file():
        report.extraction = json.loads(cache.read_text())
    helper = Helper()
    try:
        for done, record in enumerate(records, start=1):
            if num_classes is not None and not 0 <= record.label < num_classes:
                report.problems.append(
                    Problem(
                        kind="label",
                        path=record.path,
                        detail=f"label {record.label} outside 0..{num_classes - 1}",
                    )
                )
            if source == "rawframes":
                frames, problems = _check_rawframes(record, root, frame_template, depth)
            else:
                frames, problems = _check_video(record, root, depth, helper, timeout)
            report.frames += frames
            report.problems.extend(problems)
            if on_entry is not None:
                on_entry(done, len(records))
    finally:
        helper.kill()
    return report
