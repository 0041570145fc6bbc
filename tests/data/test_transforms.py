"""Augmentation invariants: one random draw per clip, label-aware flipping, eval views."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from s4v_data import CLIP_MEAN, CLIP_STD, DATASETS, ClipTransform

MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _image(h: int = 48, w: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).to(
        torch.uint8
    )


def _half_black(size: int = 48) -> torch.Tensor:
    """Left half black, right half white: a flip is visible in the output."""
    image = torch.zeros(3, size, size, dtype=torch.uint8)
    image[..., size // 2 :] = 255
    return image


def _whole_frame(transform: ClipTransform) -> ClipTransform:
    """The same transform with a crop that always keeps the whole frame, so flips are visible."""
    return dataclasses.replace(transform, crop_scale=(1.0, 1.0))


def _is_flipped(clip: torch.Tensor) -> bool:
    pixels = clip * STD + MEAN  # back to [0, 1]
    half = clip.shape[-1] // 2
    return bool(pixels[..., :half].mean() > pixels[..., half:].mean())


@pytest.mark.parametrize("rand_augment", [False, True])
def test_one_random_draw_covers_every_frame(rand_augment) -> None:
    torch.manual_seed(0)
    transform = ClipTransform.for_spec(DATASETS["k400"], 32, rand_augment=rand_augment)
    clip = _image().expand(6, -1, -1, -1).clone()  # 6 identical frames
    for _ in range(8):
        out, _ = transform.train(clip, 0)
        assert out.shape == (6, 3, 32, 32)
        assert out.dtype == torch.float32
        assert torch.equal(out, out[:1].expand_as(out))  # same crop, ops, flip, grayscale


def test_different_clips_get_different_draws() -> None:
    torch.manual_seed(0)
    transform = ClipTransform.for_spec(DATASETS["k400"], 32)
    clip = _image().expand(2, -1, -1, -1).clone()
    outs = [transform.train(clip, 0)[0] for _ in range(5)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_swap_label_flip_swaps_exactly_the_named_pairs() -> None:
    torch.manual_seed(0)
    spec = DATASETS["ssv2"]
    transform = _whole_frame(ClipTransform.for_spec(spec, 32))
    clip = _half_black().expand(2, -1, -1, -1).clone()
    swap = {86: 87, 87: 86, 93: 94, 94: 93, 166: 167, 167: 166}
    for label in [*swap, 0, 85, 88, 92, 95, 165, 168, 173]:
        outcomes = set()
        for _ in range(12):
            out, new_label = transform.train(clip, label)
            flipped = _is_flipped(out)
            outcomes.add(flipped)
            expected = swap.get(label, label) if flipped else label
            assert new_label == expected, (label, flipped, new_label)
        assert outcomes == {True, False}  # both outcomes occur, so both branches were checked


def test_plain_flip_keeps_labels_and_none_never_flips() -> None:
    torch.manual_seed(0)
    clip = _half_black().expand(2, -1, -1, -1).clone()
    plain = _whole_frame(ClipTransform.for_spec(DATASETS["ssv2"], 32, flip="plain"))
    results = [plain.train(clip, 86) for _ in range(20)]
    assert {label for _, label in results} == {86}
    assert {_is_flipped(out) for out, _ in results} == {True, False}
    none = _whole_frame(ClipTransform.for_spec(DATASETS["ssv2"], 32, flip="none"))
    assert not any(_is_flipped(none.train(clip, 86)[0]) for _ in range(20))


def test_grayscale_probability_one_gives_equal_channels() -> None:
    transform = ClipTransform(
        input_size=32, resize="short-side", resize_size=(36, 36), grayscale_p=1.0
    )
    out, _ = transform.train(_image().expand(3, -1, -1, -1).clone(), 0)
    pixels = out * STD + MEAN
    assert torch.allclose(pixels[:, 0], pixels[:, 1], atol=1e-5)
    assert torch.allclose(pixels[:, 1], pixels[:, 2], atol=1e-5)


def test_resize_policies_follow_the_spec() -> None:
    assert DATASETS["ssv1"].resize_for(224) == (256, 320)
    assert DATASETS["k400"].resize_for(224) == (256, 256)
    clip = _image(60, 90).expand(2, -1, -1, -1).clone()
    sth = ClipTransform.for_spec(DATASETS["ssv2"], 224)
    assert sth.resize_frames(clip).shape[-2:] == (256, 320)  # squashed, aspect not kept
    k400 = ClipTransform.for_spec(DATASETS["k400"], 224)
    assert k400.resize_frames(clip).shape[-2:] == (256, 384)  # short side 256


def test_eval_is_deterministic_centre_crop() -> None:
    transform = ClipTransform.for_spec(DATASETS["k400"], 32)
    clip = _image().expand(4, -1, -1, -1).clone()
    a, b = transform.eval(clip), transform.eval(clip)
    assert a.shape == (1, 4, 3, 32, 32)
    assert torch.equal(a, b)


def test_three_crops_run_along_the_longer_side() -> None:
    transform = ClipTransform(
        input_size=32, resize="short-side", resize_size=(32, 32), test_crops=3
    )
    ramp = torch.arange(64, dtype=torch.uint8).expand(3, 32, 64)  # pixel value = x coordinate
    views = transform.eval(ramp.expand(2, -1, -1, -1).clone())
    assert views.shape == (3, 2, 3, 32, 32)
    left_x = [round(float((v[0, 0, 0, 0] * STD[0, 0, 0] + MEAN[0, 0, 0]) * 255)) for v in views]
    assert left_x == [0, 16, 32]
