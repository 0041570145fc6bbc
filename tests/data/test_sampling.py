"""Frame sampling formulas (spec 3.2) against indices computed by hand (0-based)."""

from __future__ import annotations

import random

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
    # tick=1.5: starts 0, int(0.5)=0
    assert kinetics_test(6, 4, 2) == [[0, 1, 3, 4], [0, 1, 3, 4]]
    # shorter than the clip: tick=0.75, the negative end offset truncates to 0
    assert kinetics_test(3, 4, 2) == [[0, 0, 1, 2], [0, 0, 1, 2]]


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
        for clip in result:
            assert len(clip) == t
            assert all(0 <= i < n for i in clip)
            assert clip == sorted(clip)


def test_clip_plan_is_reproducible_for_a_seed() -> None:
    plan = ClipPlan(family="sth", mode="train", num_frames=8, seed=3)
    assert plan.indices(100) == plan.indices(100)
    other = ClipPlan(family="sth", mode="train", num_frames=8, seed=4)
    assert any(
        other.indices(100)
        != ClipPlan(family="sth", mode="train", num_frames=8, seed=s).indices(100)
        for s in range(5, 9)
    )


def test_train_sampling_without_a_generator_is_refused() -> None:
    with pytest.raises(ValueError, match="random generator"):
        sample_indices("sth", "train", 10, 4)
