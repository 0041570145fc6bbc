"""Frame sampling formulas (the reference's ``Recognition/datasets/sth.py`` and ``kinetics.py``,
github.com/HJYao00/Side4Video @ 5d72352) against indices computed by hand (0-based)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from s4v_data.sampling import (
    ClipPlan,
    kinetics_test,
    kinetics_train,
    kinetics_val,
    sample_indices,
    sth_test,
    sth_train,
    sth_val,
)


def test_sth_val_matches_hand_computed_indices() -> None:
    # n=20, t=4: s=4.75, floor(s/2)=2; round(0, 4.75, 9.5, 14.25) = 0, 5, 10 (half to even), 14
    assert sth_val(20, 4) == [2, 7, 12, 16]
    # a video shorter than the clip: s=0.5, frames repeat
    assert sth_val(5, 8) == [0, 0, 1, 2, 2, 2, 3, 4]


def test_kinetics_val_takes_segment_starts() -> None:
    assert kinetics_val(20, 8) == [0, 2, 5, 7, 10, 12, 15, 17]
    assert kinetics_val(5, 8) == [0, 0, 1, 1, 2, 3, 3, 4]


def test_sth_test_shifts_clips_inside_segments() -> None:
    # s=4.75, d=s/3: floor(d)=1, floor(2d)=3, added to round(s*i) = 0, 5, 10, 14
    assert sth_test(20, 4, 2) == [[1, 6, 11, 15], [3, 8, 13, 17]]
    assert sth_test(20, 4, 1) == [[2, 7, 12, 16]]  # one clip = the val sampling


def test_kinetics_test_spreads_clip_starts_over_a_tick() -> None:
    # tick=5, starts int(linspace(0, 4, 3)) = 0, 2, 4
    assert kinetics_test(20, 4, 3) == [[0, 5, 10, 15], [2, 7, 12, 17], [4, 9, 14, 19]]
    assert kinetics_test(40, 4, 4)[3] == [9, 19, 29, 39]
    # tick=1.5: starts 0, floor(0.5)=0
    assert kinetics_test(6, 4, 2) == [[0, 1, 3, 4], [0, 1, 3, 4]]


def test_kinetics_test_short_video_clips_start_one_frame_back_and_wrap() -> None:
    # n=7, t=8: tick=0.875, starts floor(0, -0.0625, -0.125) = 0, -1, -1.
    # Clip 0: int(0.875*i) = 0, 0, 1, 2, 3, 4, 5, 6.
    # Clips 1, 2: int(-1 + 0.875*i) = -1, int(-0.125)=0, int(0.75)=0, 1, 2, 3, 4, 5; -1 mod 7 = 6.
    assert kinetics_test(7, 8, 3) == [
        [0, 0, 1, 2, 3, 4, 5, 6],
        [6, 0, 0, 1, 2, 3, 4, 5],
        [6, 0, 0, 1, 2, 3, 4, 5],
    ]
    # n=3, t=4: tick=0.75, starts 0, floor(-0.25)=-1; int(-1 + 0.75*i) = -1, 0, 0, 1; -1 mod 3 = 2.
    assert kinetics_test(3, 4, 2) == [[0, 0, 1, 2], [2, 0, 0, 1]]
    # n=5, t=8: tick=0.625, starts 0, -1, -1, -1 (step -0.125);
    # int(-1 + 0.625*i) = -1, 0, 0, 0, 1, 2, 2, 3; -1 mod 5 = 4.
    assert kinetics_test(5, 8, 4) == [
        [0, 0, 1, 1, 2, 3, 3, 4],
        *[[4, 0, 0, 0, 1, 2, 2, 3]] * 3,
    ]
    # one frame: everything is frame 0
    assert kinetics_test(1, 8, 3) == [[0] * 8] * 3
    # as long as the clip: tick=1, every start is 0
    assert kinetics_test(4, 4, 3) == [[0, 1, 2, 3]] * 3


def test_kinetics_test_starts_round_like_numpy_linspace() -> None:
    # n=12, t=5: tick-1 = 1.4 (as a double a hair below), step = 1.4/7 rounds to just below 0.2,
    # so 5*step is just below 1 and floors to 0, while 5*1.4/7 is exactly 1.0. The last point is
    # floor(1.4) = 1. A start >= 0 is the clip's first frame.
    assert [clip[0] for clip in kinetics_test(12, 5, 8)] == [0, 0, 0, 0, 0, 0, 1, 1]
    assert kinetics_test(12, 5, 8)[5] == [0, 2, 4, 7, 9]  # int(2.4*i), 3*2.4 = 7.199...


def test_kinetics_test_matches_numpy_linspace_on_a_grid() -> None:
    # The reference: starts = np.linspace(0, tick - 1, clips, dtype=int), frame int(start + tick*i).
    for n in [1, 2, 3, 5, 7, 8, 9, 12, 13, 17, 19, 31, 64, 100, 301]:
        for t in [1, 3, 4, 5, 8, 16, 32]:
            tick = n / t
            for clips in range(1, 11):
                starts = np.linspace(0, tick - 1, clips, dtype=int).tolist()
                expected = [[int(start + tick * i) % n for i in range(t)] for start in starts]
                assert kinetics_test(n, t, clips) == expected, (n, t, clips)


def test_sth_train_draws_one_frame_per_segment_and_covers_each_segment() -> None:
    rng = random.Random(0)
    segments = [(0, 5), (5, 10), (10, 15), (15, 20)]  # i*n//t for n=20, t=4
    seen = [set() for _ in segments]
    for _ in range(400):
        indices = sth_train(20, 4, rng)
        for i, (lo, hi) in enumerate(segments):
            assert lo <= indices[i] < hi
            seen[i].add(indices[i])
    assert seen == [set(range(lo, hi)) for lo, hi in segments]


def test_sth_train_short_video_takes_all_frames_plus_sorted_repeats() -> None:
    rng = random.Random(1)
    for _ in range(50):
        indices = sth_train(3, 5, rng)
        assert len(indices) == 5
        assert indices == sorted(indices)
        assert set(indices) == {0, 1, 2}
    assert sth_train(4, 4, rng) == [0, 1, 2, 3]


def test_kinetics_train_draws_within_rounded_inclusive_bounds() -> None:
    # n=10, t=4: s=2.25; bounds [round(s*i), round(s*(i+1))] = [0,2], [2,4], [4,7], [7,9]
    bounds = [(0, 2), (2, 4), (4, 7), (7, 9)]
    rng = random.Random(0)
    seen = [set() for _ in bounds]
    for _ in range(400):
        for i, index in enumerate(kinetics_train(10, 4, rng)):
            seen[i].add(index)
    assert seen == [set(range(lo, hi + 1)) for lo, hi in bounds]


@pytest.mark.parametrize("family", ["sth", "kinetics"])
@pytest.mark.parametrize("n", [1, 3, 8, 17, 300])
@pytest.mark.parametrize("t", [1, 8, 16])
def test_every_mode_returns_t_in_range_indices(family, n, t) -> None:
    rng = random.Random(0)
    for mode, clips in [("train", 1), ("val", 1), ("test", 3)]:
        result = sample_indices(family, mode, n, t, rng=rng, clips=clips)
        assert len(result) == clips
        # Kinetics test clips of a video shorter than a clip start with its last frame (wrap).
        wraps = family == "kinetics" and mode == "test" and n < t
        for clip in result:
            assert len(clip) == t
            assert all(0 <= i < n for i in clip)
            assert clip == sorted(clip) or wraps


def test_clip_plan_is_reproducible_for_a_seed() -> None:
    plan = ClipPlan(family="sth", mode="train", num_frames=8, seed=3)
    first = plan.indices(100)
    random.seed(123)  # the global generator plays no part
    assert plan.indices(100) == first
    assert ClipPlan(family="sth", mode="train", num_frames=8, seed=3).indices(100) == first
    other = ClipPlan(family="sth", mode="train", num_frames=8, seed=4)
    assert any(
        other.indices(100)
        != ClipPlan(family="sth", mode="train", num_frames=8, seed=s).indices(100)
        for s in range(5, 9)
    )


def test_train_sampling_without_a_generator_is_refused() -> None:
    with pytest.raises(ValueError, match="random generator"):
        sample_indices("sth", "train", 10, 4)
