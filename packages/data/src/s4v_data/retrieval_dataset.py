"""Video-text datasets for retrieval: (clip, caption) pairs to train on, videos to evaluate.

Stages as for recognition (parse -> sample indices -> decode -> transform -> collate): annotations
come from :mod:`s4v_data.retrieval` (a :data:`s4v_data.specs.RETRIEVAL_LAYOUTS` entry reads a split), indices from
its retrieval sampling strategies, frames from :mod:`s4v_data.decode` (JPEG folders or decord), and
every clip is resized (short side, bicubic), centre-cropped and CLIP-normalised, without
augmentation, as the reference does (``Retrieval/dataloaders/rawframes_util.py``, ``_transform``).

Shapes (S = input size, T = frames per clip, L = tokens per caption):
    :class:`VideoTextPairs`  item ``(clip (T, 3, S, S) float, tokens (L,) int64)`` when a tokenizer
                             is given (else the caption string); batches ``(B, T, 3, S, S)``, ``(B, L)``.
    :class:`RetrievalVideos` item ``(clip (T, 3, S, S) float, video index)``; batches
                             ``(B, T, 3, S, S)``, ``(B,)``. Captions for evaluation are
                             ``annotations.pairs()``, in the order retrieval metrics expect.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from s4v_data.decode import IsolatedVideoReader, decode_rawframes, decode_video
from s4v_data.retrieval import (
    CaptionedVideos,
    SamplingName,
    Split,
    sample_retrieval_indices,
)
from s4v_data.specs import RetrievalLayout
from s4v_data.transforms import CLIP_MEAN, CLIP_STD, ClipTransform

__all__ = ["RetrievalClipPlan", "RetrievalVideos", "VideoTextPairs"]

log = logging.getLogger(__name__)

Source = Literal["rawframes", "video"]
CaptionSampling = Literal["every-caption", "random-caption"]
Tokenize = Callable[[list[str]], torch.Tensor]  # captions -> (len, L) int64 token ids


@dataclass(frozen=True, kw_only=True, slots=True)
class RetrievalClipPlan:
    """One clip of ``num_frames`` frames under a retrieval sampling strategy (picklable).

    Implements the ``indices(n)`` interface the decoders of :mod:`s4v_data.decode` call once they
    know a video's frame count.
    """

    strategy: SamplingName
    num_frames: int
    seed: int | None = None  # seeds random-segment sampling

    def indices(self, n: int) -> list[list[int]]:
        rng = random.Random(self.seed) if self.strategy == "random-segment" else None
        return [sample_retrieval_indices(self.strategy, n, self.num_frames, rng)]


class _ClipSource:
    """Decodes one video's clip from its frame folder or video file and prepares it."""

    def __init__(
        self,
        layout: RetrievalLayout,
        media_root: Path,
        split: Split,
        *,
        source: Source,
        num_frames: int,
        input_size: int,
        isolate_decoding: bool,
        decode_timeout: float,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        if source not in ("rawframes", "video"):
            raise ValueError(f"source must be 'rawframes' or 'video', got {source!r}")
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.layout = layout
        self.media_root = Path(media_root)
        self.split = split
        self.source = source
        self.num_frames = num_frames
        self.transform = ClipTransform(
            input_size=input_size,
            resize="short-side",
            resize_size=(input_size, input_size),
            mean=mean,
            std=std,
        )
        self.reader = (
            IsolatedVideoReader(timeout=decode_timeout)
            if source == "video" and isolate_decoding
            else None
        )

    def path(self, video_id: str) -> Path:
        template = self.layout.frame_dir if self.source == "rawframes" else self.layout.video_file
        return self.media_root / template.format(split=self.split, video_id=video_id)

    def clip(self, video_id: str, plan: RetrievalClipPlan) -> torch.Tensor:
        """The prepared clip ``(T, 3, S, S)`` float of ``video_id``."""
        path = self.path(video_id)
        if self.source == "rawframes":
            frames, positions = decode_rawframes(path, plan, self.layout.frame_template)
        elif self.reader is not None:
            frames, positions = self.reader.decode(path, plan)
        else:
            frames, positions = decode_video(path, plan)
        return self.transform.eval(frames[positions[0]])[0]  # (T, 3, S, S)


class VideoTextPairs(Dataset):
    """Training pairs of a retrieval split.

    Args:
        annotations: the split's videos and captions.
        layout: where frames live and how they are named.
        media_root: folder the layout's frame folders / video files are relative to.
        split: the split name (some layouts keep each split's media in its own folder).
        num_frames: T (reference: 12).
        input_size: S.
        tokenize: turns captions into token ids; without it items carry the caption string.
        captions: ``"every-caption"``: every (video, caption) pair is a sample (the reference, e.g.
            MSR-VTT's ``--expand_msrvtt_sentences``); ``"random-caption"``: one sample per video
            with a caption drawn at random each time, so a batch never holds one video twice.
        source: ``"rawframes"`` (JPEG folders) or ``"video"`` (decord).
        sampling: frame sampling (reference train: ``random-segment``).
        isolate_decoding, decode_timeout: decode videos in a helper process with a time-out.
        mean, std: normalisation (CLIP's by default).
    """

    def __init__(
        self,
        annotations: CaptionedVideos,
        layout: RetrievalLayout,
        media_root: str | Path,
        split: Split,
        *,
        num_frames: int,
        input_size: int,
        tokenize: Tokenize | None = None,
        captions: CaptionSampling = "every-caption",
        source: Source = "rawframes",
        sampling: SamplingName = "random-segment",
        isolate_decoding: bool = True,
        decode_timeout: float = 30.0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if captions not in ("every-caption", "random-caption"):
            raise ValueError(
                f"captions must be 'every-caption' or 'random-caption', got {captions!r}"
            )
        self.annotations = annotations
        self.captions = captions
        self.sampling = sampling
        self.tokenize = tokenize
        self.clips = _ClipSource(
            layout,
            Path(media_root),
            split,
            source=source,
            num_frames=num_frames,
            input_size=input_size,
            isolate_decoding=isolate_decoding,
            decode_timeout=decode_timeout,
            mean=mean,
            std=std,
        )
        self._pairs = annotations.pairs() if captions == "every-caption" else None

    def __len__(self) -> int:
        return len(self._pairs) if self._pairs is not None else self.annotations.num_videos

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor | str]:
        # One draw from torch's generator (seeded per DataLoader worker) drives this item's
        # randomness, so a run is reproducible.
        seed = int(torch.randint(2**62, ()))
        if self._pairs is not None:
            video, caption = self._pairs[index]
        else:
            video = index
            options = self.annotations.captions[video]
            caption = options[random.Random(seed).randrange(len(options))]
        plan = RetrievalClipPlan(
            strategy=self.sampling, num_frames=self.clips.num_frames, seed=seed
        )
        clip = self.clips.clip(self.annotations.video_ids[video], plan)
        if self.tokenize is None:
            return clip, caption
        return clip, self.tokenize([caption])[0]


class RetrievalVideos(Dataset):
    """The videos of an evaluation split, one deterministic clip each, in annotation order.

    Arguments as for :class:`VideoTextPairs`; ``sampling`` defaults to the layout's test sampling.
    """

    def __init__(
        self,
        annotations: CaptionedVideos,
        layout: RetrievalLayout,
        media_root: str | Path,
        split: Split,
        *,
        num_frames: int,
        input_size: int,
        source: Source = "rawframes",
        sampling: SamplingName | None = None,
        isolate_decoding: bool = True,
        decode_timeout: float = 30.0,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        self.annotations = annotations
        self.sampling: SamplingName = sampling or layout.test_sampling
        if self.sampling == "random-segment":
            raise ValueError("evaluation needs a deterministic sampling, not random-segment")
        self.clips = _ClipSource(
            layout,
            Path(media_root),
            split,
            source=source,
            num_frames=num_frames,
            input_size=input_size,
            isolate_decoding=isolate_decoding,
            decode_timeout=decode_timeout,
            mean=mean,
            std=std,
        )

    def __len__(self) -> int:
        return self.annotations.num_videos

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        plan = RetrievalClipPlan(strategy=self.sampling, num_frames=self.clips.num_frames)
        return self.clips.clip(self.annotations.video_ids[index], plan), index
