"""Frame extraction: decode videos (decord or PyAV) into the rawframe layout, safely and resumably.

Each video is decoded in a worker process with a time-out, so a file that hangs decord (it can
loop forever holding the GIL, decord#373) or crashes it costs one worker, which is replaced, and is
reported as unreadable. Frames are written to a temporary folder and renamed into place when the
video is complete: a killed run never leaves a half-written video folder, and a re-run skips every
folder that exists.

The output folder is the cache. ``s4v_extract.json`` in it records the extractor and the settings
(fps, short side, frame names, JPEG quality); extracting into it again with other settings raises
:class:`CacheMismatchError` instead of silently mixing frames made two ways.
"""

from __future__ import annotations

import json
import logging
import os
import select
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from s4v_data._helper import Helper, HelperDied, HelperError, HelperTimeout
from s4v_data._worker import BACKENDS, backend_version, default_backend, resample_indices
from s4v_data._worker import extract_video as _extract
from s4v_data.annotations import VideoRecord

__all__ = [
    "CACHE_FILE",
    "CacheMismatchError",
    "ExtractConfig",
    "ExtractReport",
    "VideoResult",
    "extract_video",
    "extract_videos",
    "frame_dir_for",
    "resample_indices",
]

log = logging.getLogger(__name__)

CACHE_FILE = "s4v_extract.json"
TMP_DIR = ".s4v-tmp"  # temporary folders live here, on the same file system as the output


class CacheMismatchError(ValueError):
    """The output folder holds frames extracted with other settings."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ExtractConfig:
    """How frames are extracted; every field changes the bytes, so all are part of the cache key."""

    fps: float | None = None  # resample to this frame rate; None keeps every decoded frame
    short_side: int | None = 256  # resize so the shorter side has this many pixels; None keeps it
    frame_template: str = "img_{:05d}.jpg"  # 1-based frame file names
    jpeg_quality: int = 90
    backend: str | None = None  # "decord" or "pyav"; None: decord where it is installed

    def __post_init__(self) -> None:
        if self.backend is None:
            object.__setattr__(self, "backend", default_backend())
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.fps is not None and self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if self.short_side is not None and self.short_side < 8:
            raise ValueError(f"short_side must be at least 8 pixels, got {self.short_side}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {self.jpeg_quality}")
        try:
            self.frame_template.format(1)
        except (IndexError, KeyError, ValueError) as e:
            raise ValueError(f"frame_template {self.frame_template!r} is invalid: {e}") from None

    def settings(self) -> dict[str, object]:
        """Keyword arguments of the helper's extraction function."""
        return {
            "fps": self.fps,
            "short_side": self.short_side,
            "frame_template": self.frame_template,
            "jpeg_quality": self.jpeg_quality,
            "backend": self.backend,
        }

    def cache_key(self) -> dict[str, object]:
        """What the cache metadata records: extractor and settings."""
        return {
            "extractor": backend_version(self.backend),
            "fps": self.fps,
            "short_side": self.short_side,
            "frame_template": self.frame_template,
            "jpeg_quality": self.jpeg_quality,
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class VideoResult:
    """What happened to one video of the list."""

    path: str  # as in the video list
    label: int
    frame_dir: str  # relative to the output folder
    status: Literal["extracted", "skipped", "failed"]  # skipped: already extracted earlier
    num_frames: int | None = None
    error: str | None = None


@dataclass(kw_only=True, slots=True)
class ExtractReport:
    """All results of one extraction run, in list order."""

    results: list[VideoResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        """Number of videos with this status."""
        return sum(r.status == status for r in self.results)

    @property
    def failed(self) -> list[VideoResult]:
        """Videos that could not be extracted."""
        return [r for r in self.results if r.status == "failed"]

    def records(self) -> list[VideoRecord]:
        """Rawframe-list entries (true frame counts) of every extracted or skipped video."""
        return [
            VideoRecord(path=r.frame_dir, num_frames=r.num_frames, label=r.label)
            for r in self.results
            if r.status != "failed"
        ]


def frame_dir_for(video_path: str) -> str:
    """The frame folder of a video: its relative path without the extension."""
    return str(Path(video_path).with_suffix(""))


def extract_video(
    video: str | Path, frame_dir: str | Path, config: ExtractConfig, tmp_root: str | Path
) -> int:
    """Extract one video in this process (no time-out); returns the number of frames written.

    The frames go to a fresh folder under ``tmp_root`` and are renamed to ``frame_dir`` when
    complete. :func:`extract_videos` runs the same code in helper processes.
    """
    return _extract(video, frame_dir, tmp_root, **config.settings())


@dataclass(slots=True)
class _Busy:
    task: int
    deadline: float


def _run(
    tasks: Sequence[tuple[Path, Path]],
    workers: int,
    timeout: float,
    config: ExtractConfig,
    tmp_root: Path,
) -> Iterator[tuple[int, int | None, str | None]]:
    """Yield ``(task index, frame count or None, error or None)`` as videos finish.

    Each helper process extracts one video at a time; one that misses its deadline is killed and
    one that dies is reported, and the next request starts a fresh helper.
    """
    helpers = [Helper() for _ in range(min(workers, len(tasks)))]
    busy: dict[int, _Busy] = {}  # helper index -> its task
    queue = deque(range(len(tasks)))
    settings = config.settings()
    try:
        while queue or busy:
            for h, helper in enumerate(helpers):
                if h not in busy and queue:
                    task = queue.popleft()
                    video, frame_dir = tasks[task]
                    helper.send(("extract", str(video), str(frame_dir), str(tmp_root), settings))
                    busy[h] = _Busy(task=task, deadline=time.monotonic() + timeout)
            soonest = min(b.deadline for b in busy.values())
            ready = set(
                select.select(
                    [helpers[h].fileno() for h in busy],
                    [],
                    [],
                    max(0.0, soonest - time.monotonic()),
                )[0]
            )
            now = time.monotonic()
            for h in list(busy):
                helper, job = helpers[h], busy[h]
                if helper.fileno() in ready:
                    del busy[h]
                    try:
                        count = helper.receive(now + 10.0)  # the short reply is already arriving
                    except (HelperTimeout, HelperDied, HelperError) as e:
                        yield job.task, None, str(e) or "no reply from the worker"
                    else:
                        yield job.task, count, None
                elif now >= job.deadline:
                    del busy[h]
                    helper.kill()
                    yield job.task, None, f"timed out after {timeout:g} s (worker killed)"
    finally:
        for helper in helpers:
            helper.kill()


def _check_cache(out_root: Path, config: ExtractConfig) -> None:
    key = config.cache_key()
    path = out_root / CACHE_FILE
    if path.is_file():
        found = json.loads(path.read_text())
        if found != key:
            diff = ", ".join(
                f"{k}: cache {found.get(k)!r} vs now {key.get(k)!r}"
                for k in sorted(set(found) | set(key))
                if found.get(k) != key.get(k)
            )
            raise CacheMismatchError(
                f"{out_root} holds frames extracted with other settings ({diff}); use another "
                f"output folder or the same settings"
            )
    else:
        out_root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(key, indent=2, sort_keys=True) + "\n")


def _clean_stale_tmp(tmp_root: Path) -> None:
    """Remove temporary folders of runs that were killed (their process no longer exists)."""
    if not tmp_root.is_dir():
        return
    for entry in tmp_root.iterdir():
        pid = entry.name.split("-", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def extract_videos(
    records: Sequence[VideoRecord],
    video_root: str | Path,
    out_root: str | Path,
    config: ExtractConfig = ExtractConfig(),  # frozen, so sharing the default is safe
    *,
    workers: int = 2,
    timeout: float = 120.0,
    on_result: Callable[[VideoResult], None] | None = None,
) -> ExtractReport:
    """Extract every video of a video list into ``out_root/<video path without extension>/``.

    Args:
        records: entries of a video list (paths relative to ``video_root``).
        video_root: folder the video paths are relative to.
        out_root: output folder (the frame cache).
        config: fps, size and naming of the frames.
        workers: parallel worker processes.
        timeout: seconds per video before its worker is killed and the video reported.
        on_result: called once per video as it finishes (progress bars).

    Returns:
        The per-video results in list order; ``report.records()`` is the rawframe list.

    Raises:
        CacheMismatchError: ``out_root`` was extracted with other settings.
        ValueError: two videos map to the same frame folder.
    """
    video_root, out_root = Path(video_root), Path(out_root)
    frame_dirs = [frame_dir_for(r.path) for r in records]
    seen: dict[str, str] = {}
    for record, frame_dir in zip(records, frame_dirs, strict=True):
        if frame_dir in seen and seen[frame_dir] != record.path:
            raise ValueError(
                f"{seen[frame_dir]} and {record.path} would share the frame folder {frame_dir}"
            )
        seen[frame_dir] = record.path
    _check_cache(out_root, config)
    tmp_root = out_root / TMP_DIR
    _clean_stale_tmp(tmp_root)

    results: dict[int, VideoResult] = {}

    def finish(index: int, result: VideoResult) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    todo: list[int] = []
    done_dirs: dict[str, int] = {}  # a frame folder listed twice is extracted once
    for index, (record, frame_dir) in enumerate(zip(records, frame_dirs, strict=True)):
        target = out_root / frame_dir
        if target.is_dir():
            finish(index, _result(record, frame_dir, "skipped", len(os.listdir(target))))
        elif not (video_root / record.path).exists():
            error = f"no such file {video_root / record.path}"
            finish(index, _result(record, frame_dir, "failed", error=error))
        elif frame_dir not in done_dirs:
            done_dirs[frame_dir] = index
            todo.append(index)
    if todo:
        tasks = [(video_root / records[i].path, out_root / frame_dirs[i]) for i in todo]
        for task, count, error in _run(tasks, workers, timeout, config, tmp_root):
            index = todo[task]
            if error is None:
                finish(index, _result(records[index], frame_dirs[index], "extracted", count))
            else:
                log.warning("cannot extract %s: %s", tasks[task][0], error)
                finish(index, _result(records[index], frame_dirs[index], "failed", error=error))
    for index, (record, frame_dir) in enumerate(zip(records, frame_dirs, strict=True)):
        if index not in results:  # a duplicate entry: same outcome as its first occurrence
            first = results[done_dirs[frame_dir]]
            finish(index, _result(record, frame_dir, first.status, first.num_frames, first.error))
    if tmp_root.is_dir() and not any(tmp_root.iterdir()):
        tmp_root.rmdir()
    return ExtractReport(results=[results[i] for i in range(len(records))])


def _result(
    record: VideoRecord,
    frame_dir: str,
    status: Literal["extracted", "skipped", "failed"],
    num_frames: int | None = None,
    error: str | None = None,
) -> VideoResult:
    return VideoResult(
        path=record.path,
        label=record.label,
        frame_dir=frame_dir,
        status=status,
        num_frames=num_frames,
        error=error,
    )
