"""The clip dataset and its DataLoader: list -> sample indices -> decode -> transform -> collate.

Shapes (S = input size, T = frames per clip, V = test views = crops x clips):
    train  item: ``(T, 3, S, S)``, label ``int``; with ``num_sample = R > 1``: ``(R, T, 3, S, S)``
           and labels ``(R,)`` (repeated augmentation: R augmentations of one sampled clip).
    val    item: ``(T, 3, S, S)``, label ``int``.
    test   item: ``(V, T, 3, S, S)``, label ``int``; views ordered clip-major
           (clip 0 crop 0, clip 0 crop 1, ..., clip 1 crop 0, ...).
    loader batch: ``(B', T, 3, S, S)`` with ``B' = B * R`` (train/val) or ``(B, V, T, 3, S, S)``
           (test), labels ``(B',)`` / ``(B,)``.
"""

from __future__ import annotations

import logging
import multiprocessing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from s4v_data.annotations import AnnotationError, VideoRecord, check_labels, read_list
from s4v_data.decode import (
    DecodeError,
    IsolatedVideoReader,
    decode_rawframes,
    decode_video,
    default_backend,
)
from s4v_data.loader import SignalSafeLoader
from s4v_data.sampling import ClipPlan, Mode
from s4v_data.specs import DatasetSpec, FlipMode
from s4v_data.transforms import CLIP_MEAN, CLIP_STD, ClipTransform

__all__ = [
    "EvalBatch",
    "EvalItems",
    "SkipBadSamples",
    "VideoClipDataset",
    "collate_clips",
    "collate_eval",
    "make_loader",
]

log = logging.getLogger(__name__)

Source = Literal["rawframes", "video"]


class VideoClipDataset(Dataset):
    """Clips of the videos in an annotation list, decoded from rawframes or video files.

    Args:
        list_file: rawframe list (``dir num_frames label``) or video list (``path label``); with
            ``records``, the file they were read from (for messages).
        root: folder the list's paths are relative to.
        records: the entries, when they come from elsewhere than a list (official split files).
        spec: dataset conventions (frame names, sampling family, resize, flip).
        num_frames: frames per clip (T).
        mode: ``"train"`` (random sampling and augmentation), ``"val"`` (one deterministic
            centre view) or ``"test"`` (``test_clips`` x ``test_crops`` views).
        input_size: crop size S.
        source: ``"rawframes"`` (JPEG folders) or ``"video"`` (decord or PyAV).
        num_sample: augmented copies of each training clip (repeated augmentation).
        rand_augment: RandAugment (m7, n4) before the other training transforms.
        test_crops: 1 (centre) or 3 (along the longer side) in test mode.
        test_clips: temporal clips in test mode.
        flip: override the spec's flip mode (``"swap-labels"``, ``"plain"``, ``"none"``).
        num_classes: labels must lie in ``0..num_classes-1``; default the spec's.
        min_frames: in training, rawframe-list entries with fewer frames are dropped (as the
            reference does with 8). Validation and test keep every entry (the reference also drops
            them from validation, so that its validation and test sets differ); one that cannot
            be decoded is left out and counted by :func:`make_loader` with ``eval_items``.
        frame_count: ``"folder"`` counts each frame folder (as the reference); ``"list"`` trusts
            the list's count.
        isolate_decoding: decode videos in a helper process with a time-out (a hanging or
            crashing file raises :class:`DecodeError` instead of stalling the run).
        decode_timeout: seconds per video before the helper is killed.
        video_backend: ``"decord"`` or ``"pyav"``; None picks decord where it is installed.
        mean, std: normalisation (CLIP's by default).
    """

    def __init__(
        self,
        list_file: str | Path,
        root: str | Path,
        *,
        spec: DatasetSpec,
        num_frames: int,
        mode: Mode,
        records: Sequence[VideoRecord] | None = None,
        input_size: int,
        source: Source = "rawframes",
        num_sample: int = 1,
        rand_augment: bool = False,
        test_crops: int = 1,
        test_clips: int = 1,
        flip: FlipMode | None = None,
        num_classes: int | None = None,
        min_frames: int = 8,
        frame_count: Literal["folder", "list"] = "folder",
        isolate_decoding: bool = True,
        decode_timeout: float = 30.0,
        video_backend: str | None = None,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
    ) -> None:
        if mode not in ("train", "val", "test"):
            raise ValueError(f"mode must be 'train', 'val' or 'test', got {mode!r}")
        if source not in ("rawframes", "video"):
            raise ValueError(f"source must be 'rawframes' or 'video', got {source!r}")
        if num_sample < 1 or num_frames < 1 or test_clips < 1:
            raise ValueError("num_sample, num_frames and test_clips must be >= 1")
        self.list_file = Path(list_file)
        self.root = Path(root)
        self.spec = spec
        self.num_frames = num_frames
        self.mode: Mode = mode
        self.source: Source = source
        self.num_sample = num_sample if mode == "train" else 1
        self.test_clips = test_clips if mode == "test" else 1
        self.frame_count = frame_count
        self.num_classes = spec.num_classes if num_classes is None else num_classes
        self.transform = ClipTransform.for_spec(
            spec,
            input_size,
            flip=flip,
            rand_augment=rand_augment,
            test_crops=test_crops if mode == "test" else 1,
            mean=mean,
            std=std,
        )
        self.records = self._load_records(min_frames, records)
        self.video_backend = video_backend or default_backend()
        self._reader = (
            IsolatedVideoReader(timeout=decode_timeout, backend=self.video_backend)
            if source == "video" and isolate_decoding
            else None
        )

    def _load_records(
        self, min_frames: int, given: Sequence[VideoRecord] | None
    ) -> list[VideoRecord]:
        records = read_list(self.list_file) if given is None else list(given)
        if not records:
            raise AnnotationError(f"{self.list_file}: the list is empty (no entry to load)")
        is_rawframe_list = records[0].num_frames is not None
        if is_rawframe_list != (self.source == "rawframes"):
            kind = "rawframe" if is_rawframe_list else "video"
            raise AnnotationError(
                f"{self.list_file}: a {kind} list cannot feed source={self.source!r}"
            )
        check_labels(records, self.num_classes, self.list_file)
        if is_rawframe_list and self.mode == "train":
            kept = [r for r in records if r.num_frames is not None and r.num_frames >= min_frames]
            if len(kept) < len(records):
                log.info(
                    "%s: dropped %d entries with fewer than %d frames",
                    self.list_file,
                    len(records) - len(kept),
                    min_frames,
                )
            records = kept
        return records

    @property
    def labels(self) -> list[int]:
        """The label of every entry, in order (for samplers and class statistics)."""
        return [r.label for r in self.records]

    @property
    def views(self) -> int:
        """Views per test item (crops x clips); 1 outside test mode."""
        return self.transform.test_crops * self.test_clips

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        record = self.records[index]
        seed = int(torch.randint(2**62, ())) if self.mode == "train" else None
        plan = ClipPlan(
            family=self.spec.sampling,
            mode=self.mode,
            num_frames=self.num_frames,
            clips=self.test_clips,
            seed=seed,
        )
        frames, positions = self._decode(record, plan)
        if self.mode == "train":
            clip = frames[positions[0]]  # (T, 3, H, W) uint8
            samples = [self.transform.train(clip, record.label) for _ in range(self.num_sample)]
            if self.num_sample == 1:
                return samples[0]
            return (
                torch.stack([s[0] for s in samples]),  # (R, T, 3, S, S)
                torch.tensor([s[1] for s in samples]),  # (R,) labels may differ after a flip
            )
        resized = self.transform.resize_frames(frames)
        views = torch.cat([self.transform.crop_views(resized[p]) for p in positions])
        if self.mode == "val":
            return views[0], record.label  # (T, 3, S, S)
        return views, record.label  # (V, T, 3, S, S)

    def _decode(self, record: VideoRecord, plan: ClipPlan) -> tuple[torch.Tensor, list[list[int]]]:
        path = self.root / record.path
        if self.source == "rawframes":
            count = record.num_frames if self.frame_count == "list" else None
            return decode_rawframes(path, plan, self.spec.frame_template, num_frames=count)
        if self._reader is not None:
            return self._reader.decode(path, plan)
        return decode_video(path, plan, backend=self.video_backend)


class SkipBadSamples(Dataset):
    """Wraps a dataset so an undecodable sample is replaced by the next good one and reported.

    The replacement keeps batch sizes constant. ``num_skipped`` counts skips across all
    DataLoader workers; every skip is logged as a warning naming the file.
    """

    def __init__(self, dataset: Dataset, *, max_tries: int = 10) -> None:
        self.dataset = dataset
        self.max_tries = max_tries
        self._skipped = multiprocessing.Value("i", 0)

    @property
    def num_skipped(self) -> int:
        """Samples skipped so far (all workers)."""
        return int(self._skipped.value)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str):
        # Only called for attributes the wrapper lacks: expose the wrapped dataset's (labels, ...).
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        errors = []
        for attempt in range(self.max_tries):
            candidate = (index + attempt) % len(self)
            try:
                return self.dataset[candidate]
            except DecodeError as e:
                with self._skipped.get_lock():
                    self._skipped.value += 1
                log.warning("skipping an undecodable sample: %s", e)
                errors.append(str(e))
        raise DecodeError(
            f"{self.max_tries} consecutive samples from index {index} could not be decoded; "
            f"last: {errors[-1]}"
        )


class EvalItems(Dataset):
    """Evaluation items ``(index, clip, label)``; an undecodable sample is ``(index, None, None)``.

    Evaluation never replaces a sample by another (that would count a video twice): it is left
    out of the batch, logged with its file and reported in :attr:`EvalBatch.unreadable`.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getattr__(self, name: str):
        if name == "dataset":
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        try:
            clip, label = self.dataset[index]
        except DecodeError as e:
            log.warning("leaving out an undecodable sample: %s", e)
            return index, None, None
        return index, clip, label


@dataclass(frozen=True, slots=True)
class EvalBatch:
    """A batch of evaluation items: ``clips`` (None when every item was unreadable), ``labels``
    and dataset ``indices`` of the decoded items, and the indices of the ``unreadable`` ones."""

    clips: torch.Tensor | None
    labels: torch.Tensor
    indices: torch.Tensor
    unreadable: list[int]

    def pin_memory(self) -> EvalBatch:
        clips = None if self.clips is None else self.clips.pin_memory()
        return EvalBatch(clips, self.labels.pin_memory(), self.indices, self.unreadable)


def collate_eval(batch: Sequence[tuple[int, torch.Tensor | None, int | None]]) -> EvalBatch:
    """Stack the decoded :class:`EvalItems` items; list the indices of the unreadable ones."""
    kept = [item for item in batch if item[1] is not None]
    return EvalBatch(
        clips=torch.stack([clip for _, clip, _ in kept]) if kept else None,
        labels=torch.tensor([int(label) for _, _, label in kept], dtype=torch.long),
        indices=torch.tensor([index for index, _, _ in kept], dtype=torch.long),
        unreadable=[index for index, clip, _ in batch if clip is None],
    )


def collate_clips(
    batch: Sequence[tuple[torch.Tensor, int | torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack items; repeated-augmentation items ``(R, T, 3, S, S)`` are flattened into the batch.

    Returns ``(clips (B', T, 3, S, S) or (B, V, T, 3, S, S), labels (B',) or (B,))``.
    """
    clips = torch.stack([item[0] for item in batch])
    first_label = batch[0][1]
    if isinstance(first_label, torch.Tensor) and first_label.dim() == 1:
        labels = torch.cat([item[1] for item in batch])  # type: ignore[misc]
        return clips.flatten(0, 1), labels  # '(b r) t c h w'
    return clips, torch.tensor([int(item[1]) for item in batch])


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    pin_memory: bool | None = None,
    skip_bad_samples: bool = True,
    eval_items: bool = False,
    persistent_workers: bool = False,
    prefetch_factor: int | None = None,
) -> DataLoader:
    """A DataLoader of ``(clips, labels)`` batches with seeded shuffling and workers.

    Worker ``w`` of epoch ``e`` seeds torch and ``random`` from a base seed drawn from a generator
    seeded with ``seed``, so a run is reproducible for a fixed ``num_workers``. With
    ``num_workers=0`` augmentation draws from the caller's torch generator (seed it).

    Args:
        dataset: a :class:`VideoClipDataset` (or any dataset of ``(clip, label)`` items).
        batch_size: videos per batch (repeated augmentation multiplies the clips).
        shuffle: reshuffle every epoch (ignored when ``sampler`` is given).
        num_workers: loader processes.
        seed: seeds the shuffle order and the workers.
        drop_last: drop a last incomplete batch.
        sampler: e.g. a DistributedSampler; replaces ``shuffle``.
        pin_memory: default: when CUDA is available.
        skip_bad_samples: wrap in :class:`SkipBadSamples` (a bad video is replaced and logged;
            for training).
        eval_items: yield :class:`EvalBatch` es instead (a bad video is left out and listed,
            never replaced; for evaluation); ``skip_bad_samples`` is then ignored.
        persistent_workers: keep workers (and their decoder processes) alive between epochs.
        prefetch_factor: batches each worker loads ahead (torch's default 2 when None).
    """
    collate = collate_clips
    if eval_items:
        dataset, collate = EvalItems(dataset), collate_eval
    elif skip_bad_samples and not isinstance(dataset, SkipBadSamples):
        dataset = SkipBadSamples(dataset)
    generator = torch.Generator().manual_seed(seed)
    return SignalSafeLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=persistent_workers and num_workers > 0,
        prefetch_factor=prefetch_factor if num_workers > 0 else None,
    )
