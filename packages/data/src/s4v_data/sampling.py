"""Sparse (TSN-style) frame sampling as in the Side4Video reference.

Reference: github.com/HJYao00/Side4Video @ 5d72352, ``Recognition/datasets/sth.py``
(Something-Something) and ``Recognition/datasets/kinetics.py`` (Kinetics).

``n`` is the number of frames of a video, ``t`` the number of frames a clip takes. Every function
returns 0-based frame indices in ``[0, n)`` (frame files are 1-based: index ``i`` is file number
``i + 1``), in temporal order except for the Kinetics test clips of a video shorter than a clip,
which wrap around as in the reference (see :func:`kinetics_test`). ``round`` is Python's
round-half-to-even, as in the reference.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from s4v_data.specs import SamplingFamily

__all__ = [
    "ClipPlan",
    "kinetics_test",
    "kinetics_train",
    "kinetics_val",
    "sample_indices",
    "sth_test",
    "sth_train",
    "sth_val",
]

Mode = Literal["train", "val", "test"]


def _check(n: int, t: int) -> None:
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got n={n}")
    if t < 1:
        raise ValueError(f"a clip needs at least one frame, got t={t}")


def sth_train(n: int, t: int, rng: random.Random) -> list[int]:
    """Something-Something train: one random frame inside each of ``t`` equal segments.

    Segment ``i`` spans ``[i*n//t, (i+1)*n//t)``. A video with ``n <= t`` frames gives all its
    frames plus ``t - n`` random repeats, sorted.
    """
    _check(n, t)
    if n <= t:
        return sorted([*range(n), *(rng.randrange(n) for _ in range(t - n))])
    return [rng.randrange(i * n // t, (i + 1) * n // t) for i in range(t)]


def kinetics_train(n: int, t: int, rng: random.Random) -> list[int]:
    """Kinetics train: with ``s = (n-1)/t``, frame ``i`` is uniform in ``[round(s*i), round(s*(i+1))]``."""
    _check(n, t)
    s = (n - 1) / t
    return [rng.randint(round(s * i), round(s * (i + 1))) for i in range(t)]


def sth_val(n: int, t: int) -> list[int]:
    """Something-Something val: with ``s = (n-1)/t``, frame ``i`` is ``round(s*i) + floor(s/2)``."""
    _check(n, t)
    s = (n - 1) / t
    return [round(s * i) + math.floor(s / 2) for i in range(t)]


def kinetics_val(n: int, t: int) -> list[int]:
    """Kinetics val: the start of each segment, ``floor(i*n/t)``."""
    _check(n, t)
    return [i * n // t for i in range(t)]


def sth_test(n: int, t: int, clips: int) -> list[list[int]]:
    """Something-Something k-clip test: clip ``j`` takes ``round(s*i) + floor(d*(j+1))``.

    ``s = (n-1)/t`` and ``d = s/(clips+1)``, so the clips are shifted evenly inside the segments.
    """
    _check(n, t)
    s = (n - 1) / t
    d = s / (clips + 1)
    return [[round(s * i) + math.floor(d * (j + 1)) for i in range(t)] for j in range(clips)]


def _integer_linspace(stop: float, num: int) -> list[int]:
    """``np.linspace(0, stop, num, dtype=int)`` without NumPy, to the last bit.

    NumPy computes ``j * step`` with ``step = stop / (num - 1)``, sets the last point to ``stop``
    exactly and casts with ``floor`` (toward -inf, not toward zero; NumPy >= 1.20, so 1.26 and 2.x).
    One point is ``[0]`` (the start).
    """
    if num == 1:
        return [0]
    step = stop / (num - 1)
    return [math.floor(j * step) for j in range(num - 1)] + [math.floor(stop)]


def kinetics_test(n: int, t: int, clips: int) -> list[list[int]]:
    """Kinetics k-clip test: ``tick = n/t``; clip ``j`` starts at ``linspace(0, tick-1, k, int)[j]``.

    The start offsets are ``floor(j * step)``, ``step = (tick-1)/(k-1)`` rounded first, exactly as
    NumPy's integer ``linspace`` (so e.g. ``n=12, t=5, k=8`` starts ``[0, 0, 0, 0, 0, 0, 1, 1]``:
    ``5 * step`` is a hair below 1). Frame ``i`` of a clip is ``int(start + tick*i) mod n``, ``int``
    truncating toward zero as in the reference's ``_get_test_indices``. Floor and truncation part
    only for a video shorter than a clip (``n < t``, so ``tick - 1 < 0``): every clip but the first
    then starts at offset -1, its first frame is the last frame of the video (``-1 mod n``), and
    ``int`` maps the following ``start + tick*i`` in ``(-1, 0)`` to frame 0. E.g. ``n=7, t=8``,
    3 clips: ``[0, 0, 1, ..., 6]`` then twice ``[6, 0, 0, 1, 2, 3, 4, 5]``.
    """
    _check(n, t)
    tick = n / t
    starts = _integer_linspace(tick - 1, clips)
    return [[int(start + tick * i) % n for i in range(t)] for start in starts]


def sample_indices(
    family: SamplingFamily,
    mode: Mode,
    n: int,
    t: int,
    *,
    rng: random.Random | None = None,
    clips: int = 1,
) -> list[list[int]]:
    """Frame indices of the clips of one video: one clip for train/val, ``clips`` for test.

    Args:
        family: ``"sth"`` (Something-Something) or ``"kinetics"`` formulas.
        mode: ``"train"`` (random, needs ``rng``), ``"val"`` or ``"test"`` (deterministic).
        n: frames in the video; t: frames per clip; clips: temporal clips in test mode.
    """
    if mode == "train":
        if rng is None:
            raise ValueError("train sampling needs a random generator")
        sample = sth_train if family == "sth" else kinetics_train
        return [sample(n, t, rng)]
    if mode == "val":
        return [sth_val(n, t) if family == "sth" else kinetics_val(n, t)]
    if mode == "test":
        if clips < 1:
            raise ValueError(f"test sampling needs clips >= 1, got {clips}")
        return sth_test(n, t, clips) if family == "sth" else kinetics_test(n, t, clips)
    raise ValueError(f"unknown sampling mode {mode!r}; expected 'train', 'val' or 'test'")


@dataclass(frozen=True, kw_only=True, slots=True)
class ClipPlan:
    """What to sample from a video whose length is not known yet (picklable, for a decoder process)."""

    family: SamplingFamily
    mode: Mode
    num_frames: int  # frames per clip (t)
    clips: int = 1  # temporal clips in test mode
    seed: int | None = None  # seeds the random train sampling

    def indices(self, n: int) -> list[list[int]]:
        """Frame indices of each clip for a video of ``n`` frames."""
        rng = random.Random(self.seed) if self.mode == "train" else None
        return sample_indices(self.family, self.mode, n, self.num_frames, rng=rng, clips=self.clips)
