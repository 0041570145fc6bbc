"""Clip augmentation with torchvision v2 transforms on uint8 frame tensors.

The reference's pipeline (github.com/HJYao00/Side4Video @ 5d72352,
``Recognition/utils/Augmentation.py``) written with torchvision's v2 transforms.

A clip is a ``(T, 3, H, W)`` uint8 tensor. torchvision's v2 transforms treat the leading ``T`` as a
batch and draw their random parameters once per call, so one draw covers every frame of the clip
(same crop, same RandAugment ops, same flip). All randomness comes from torch's global generator,
which the DataLoader seeds per worker.

Train order (as the reference): [RandAugment] -> resize -> Inception-style random-sized crop ->
horizontal flip (plain, label-swapping or none) -> grayscale -> /255 -> normalise.
Eval: resize -> centre crop, or 3 crops along the longer side for multi-view testing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from s4v_data.specs import DatasetSpec, FlipMode, ResizeMode

__all__ = ["CLIP_MEAN", "CLIP_STD", "ClipTransform", "resize_clip", "three_crops"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def resize_clip(frames: torch.Tensor, mode: ResizeMode, size: tuple[int, int]) -> torch.Tensor:
    """Resize ``(T, 3, H, W)`` uint8 frames: ``"exact"`` to ``size``, ``"short-side"`` to ``size[0]``."""
    if mode == "exact":
        target = list(size)
    else:
        h, w = frames.shape[-2:]
        short = size[0]
        target = [short, round(w * short / h)] if h <= w else [round(h * short / w), short]
    if list(frames.shape[-2:]) == target:
        return frames
    return F.resize(frames, target, interpolation=InterpolationMode.BICUBIC, antialias=True)


def three_crops(frames: torch.Tensor, size: int) -> list[torch.Tensor]:
    """Start, centre and end ``size`` crops along the longer side, centred on the shorter one."""
    h, w = frames.shape[-2:]
    if min(h, w) < size:
        raise ValueError(f"cannot take {size}-pixel crops from {h}x{w} frames")
    if w >= h:
        top = (h - size) // 2
        return [F.crop(frames, top, left, size, size) for left in (0, (w - size) // 2, w - size)]
    left = (w - size) // 2
    return [F.crop(frames, top, left, size, size) for top in (0, (h - size) // 2, h - size)]


@dataclass(frozen=True, kw_only=True)
class ClipTransform:
    """Turns a uint8 clip into normalised float views and applies label-aware flipping.

    ``train(frames, label)`` returns ``((T, 3, S, S) float, label)``; ``eval(frames)`` returns
    ``(crops, T, 3, S, S)`` float (``crops`` = ``test_crops``, 1 or 3).
    """

    input_size: int
    resize: ResizeMode
    resize_size: tuple[int, int]  # already scaled for input_size
    crop_scale: tuple[float, float] = (0.08, 1.0)
    flip: FlipMode = "plain"
    flip_label_map: Mapping[int, int] = field(default_factory=dict)
    grayscale_p: float = 0.0
    rand_augment: bool = False
    test_crops: int = 1
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD

    def __post_init__(self) -> None:
        if self.test_crops not in (1, 3):
            raise ValueError(f"test_crops must be 1 or 3, got {self.test_crops}")

    @classmethod
    def for_spec(
        cls,
        spec: DatasetSpec,
        input_size: int,
        *,
        flip: FlipMode | None = None,
        rand_augment: bool = False,
        test_crops: int = 1,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> ClipTransform:
        """The transform a dataset spec prescribes; ``flip`` overrides the spec's flip mode."""
        flip = spec.flip if flip is None else flip
        return cls(
            input_size=input_size,
            resize=spec.resize,
            resize_size=spec.resize_for(input_size),
            crop_scale=spec.crop_scale,
            flip=flip,
            flip_label_map=spec.flip_label_map() if flip == "swap-labels" else {},
            grayscale_p=spec.grayscale_p,
            rand_augment=rand_augment,
            test_crops=test_crops,
            mean=mean,
            std=std,
        )

    def train(self, frames: torch.Tensor, label: int) -> tuple[torch.Tensor, int]:
        """One random augmentation of a ``(T, 3, H, W)`` uint8 clip -> ``(T, 3, S, S)`` float."""
        if self.rand_augment:
            # timm's rand-m7-n4 (magnitude 7 of 10) in torchvision's terms: 4 ops at bin 7 of 0..10.
            # Bilinear: torchvision's tensor affine ops do not offer timm's bicubic.
            frames = v2.RandAugment(
                num_ops=4,
                magnitude=7,
                num_magnitude_bins=11,
                interpolation=InterpolationMode.BILINEAR,
            )(frames)
        frames = resize_clip(frames, self.resize, self.resize_size)
        frames = v2.RandomResizedCrop(
            self.input_size,
            scale=self.crop_scale,
            ratio=(3 / 4, 4 / 3),
            interpolation=InterpolationMode.BILINEAR,
            antialias=True,
        )(frames)
        if self.flip != "none" and torch.rand(()) < 0.5:
            frames = frames.flip(-1)
            label = self.flip_label_map.get(label, label)
        if self.grayscale_p > 0 and torch.rand(()) < self.grayscale_p:
            frames = F.rgb_to_grayscale(frames, num_output_channels=3)
        return self._normalise(frames), label

    def eval(self, frames: torch.Tensor) -> torch.Tensor:
        """Deterministic views of a ``(T, 3, H, W)`` uint8 clip -> ``(crops, T, 3, S, S)`` float."""
        return self.crop_views(self.resize_frames(frames))

    def resize_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """The eval resize alone (so several clips of one video can share it)."""
        return resize_clip(frames, self.resize, self.resize_size)

    def crop_views(self, frames: torch.Tensor) -> torch.Tensor:
        """Crops of already resized uint8 frames -> ``(crops, T, 3, S, S)`` normalised float."""
        if self.test_crops == 1:
            crops = [F.center_crop(frames, [self.input_size, self.input_size])]
        else:
            crops = three_crops(frames, self.input_size)
        return torch.stack([self._normalise(c) for c in crops])

    def _normalise(self, frames: torch.Tensor) -> torch.Tensor:
        return F.normalize(frames.float().div_(255), list(self.mean), list(self.std))
