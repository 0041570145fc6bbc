"""Decoding frames from rawframe folders (JPEG) and from video files (decord or PyAV).

Both return the unique frames a set of clips needs, decoded once, plus each clip's positions into
them: ``frames`` is ``(U, 3, H, W)`` uint8 and ``clip_positions[j]`` indexes the ``t`` frames of clip
``j`` (so ``frames[clip_positions[j]]`` is ``(t, 3, H, W)``).

Videos are read through one interface, :func:`open_reader`, with decord where its wheels exist
(Linux x86_64, Windows AMD64) and PyAV elsewhere; :func:`default_backend` says which, and every
function takes ``backend=`` to choose one ("decord" or "pyav").

decord can hang (an infinite loop holding the GIL when a container over-reports its frame count,
decord#373) or crash on a broken file. :class:`IsolatedVideoReader` therefore decodes in a
persistent helper process with a time-out: a hang or crash costs that process, which is replaced,
and surfaces here as a :class:`DecodeError` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from s4v_data._helper import Helper, HelperDied, HelperError, HelperTimeout
from s4v_data._worker import BACKENDS, default_backend, describe, open_reader
from s4v_data.sampling import ClipPlan

__all__ = [
    "BACKENDS",
    "DecodeError",
    "IsolatedVideoReader",
    "count_frames",
    "decode_rawframes",
    "decode_video",
    "default_backend",
    "open_reader",
]


class DecodeError(RuntimeError):
    """A video or frame folder could not be decoded; the message starts with its path."""


def _unique_positions(clips: Sequence[Sequence[int]]) -> tuple[list[int], list[list[int]]]:
    unique = sorted({i for clip in clips for i in clip})
    where = {index: pos for pos, index in enumerate(unique)}
    return unique, [[where[i] for i in clip] for clip in clips]


def count_frames(frame_dir: str | Path) -> int:
    """Number of files in a rawframe folder (the reference counts the folder, not the list)."""
    try:
        return len(os.listdir(frame_dir))
    except OSError as e:
        raise DecodeError(f"{frame_dir}: cannot list the frame folder ({e.strerror})") from None


def decode_rawframes(
    frame_dir: str | Path,
    plan: ClipPlan,
    template: str,
    *,
    num_frames: int | None = None,
) -> tuple[torch.Tensor, list[list[int]]]:
    """Decode the frames ``plan`` needs from a rawframe folder.

    Args:
        frame_dir: folder of frames named by ``template`` (1-based, e.g. ``img_{:05d}.jpg``).
        plan: which clips to sample.
        template: frame file name pattern.
        num_frames: frame count to sample from; None counts the folder.

    Returns:
        ``(frames (U, 3, H, W) uint8, clip_positions)``.
    """
    frame_dir = Path(frame_dir)
    n = count_frames(frame_dir) if num_frames is None else num_frames
    if n < 1:
        raise DecodeError(f"{frame_dir}: the frame folder is empty")
    unique, positions = _unique_positions(plan.indices(n))
    frames = []
    for index in unique:
        path = frame_dir / template.format(index + 1)
        try:
            with Image.open(path) as image:
                frames.append(np.asarray(image.convert("RGB")))
        except OSError as e:  # missing, truncated or not an image
            raise DecodeError(f"{path}: cannot decode the frame ({e})") from None
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DecodeError(f"{frame_dir}: frames differ in size {sorted(shapes)}")
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous(), positions


def decode_video(
    path: str | Path, plan: ClipPlan, *, num_threads: int = 1, backend: str | None = None
) -> tuple[torch.Tensor, list[list[int]]]:
    """Decode the frames ``plan`` needs from a video file, in this process.

    Args:
        path: the video file.
        plan: which clips to sample.
        num_threads: decoder threads.
        backend: ``"decord"`` or ``"pyav"``; None picks :func:`default_backend`.

    Returns:
        ``(frames (U, 3, H, W) uint8, clip_positions)``.
    """
    try:
        reader = open_reader(path, num_threads, backend)
        n = len(reader)
        if n < 1:
            raise DecodeError(f"{path}: the video has no frames")
        unique, positions = _unique_positions(plan.indices(n))
        array = reader.get_batch(unique)  # (U, H, W, 3)
    except DecodeError:
        raise
    except Exception as e:  # decord and PyAV raise their own and plain runtime errors
        raise DecodeError(f"{path}: {describe(e)}") from None
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), positions


class IsolatedVideoReader:
    """Decodes videos in a helper process, with a time-out per request.

    The helper is started on first use in the process that uses it (a DataLoader worker gets its
    own) and reused for every video. A hang past ``timeout`` seconds or a crash of the helper raises
    :class:`DecodeError`; the next call starts a fresh helper. Picklable (the helper is not copied).
    """

    def __init__(
        self, *, timeout: float = 30.0, num_threads: int = 1, backend: str | None = None
    ) -> None:
        self.timeout = timeout
        self.num_threads = num_threads
        self.backend = backend or default_backend()
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown video backend {backend!r}; choose one of {BACKENDS}")
        self._helper = Helper()

    def __getstate__(self) -> dict[str, float | int | str]:
        return {"timeout": self.timeout, "num_threads": self.num_threads, "backend": self.backend}

    def __setstate__(self, state: dict[str, float | int | str]) -> None:
        self.__init__(
            timeout=float(state["timeout"]),
            num_threads=int(state["num_threads"]),
            backend=str(state["backend"]),
        )

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        """Stop the helper process (it also exits by itself when this process ends)."""
        if hasattr(self, "_helper"):
            self._helper.kill()

    def decode(self, path: str | Path, plan: ClipPlan) -> tuple[torch.Tensor, list[list[int]]]:
        """Like :func:`decode_video`, in the helper process. Returns ``(frames, clip_positions)``."""
        n = self._request(path, ("open", str(path), self.num_threads, self.backend))
        if n < 1:
            raise DecodeError(f"{path}: the video has no frames")
        unique, positions = _unique_positions(plan.indices(n))
        array = self._request(path, ("get", unique))
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous(), positions

    def probe(self, path: str | Path) -> tuple[int, float]:
        """Open ``path`` in the helper: its frame count and average frame rate.

        The file stays open for :meth:`frames`.
        """
        n = self._request(path, ("open", str(path), self.num_threads, self.backend))
        if n < 1:
            raise DecodeError(f"{path}: the video has no frames")
        return n, self._request(path, ("fps",))

    def frames(self, path: str | Path, indices: Sequence[int]) -> torch.Tensor:
        """Frames ``(U, 3, H, W)`` uint8 at ``indices`` of the file :meth:`probe` opened last."""
        array = self._request(path, ("get", list(indices)))
        return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()

    def _request(self, path: str | Path, message: tuple) -> Any:
        try:
            return self._helper.request(message, self.timeout)
        except HelperTimeout:
            raise DecodeError(
                f"{path}: decoding timed out after {self.timeout:g} s (helper process killed)"
            ) from None
        except (HelperDied, HelperError) as e:
            raise DecodeError(f"{path}: {e}") from None
